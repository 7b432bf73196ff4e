"""Static HTML component browser (fig:components-showcase): opens from disk, no server.

`browser/index.html` lists the decomposed matrices; `browser/<matrix>.html` shows one card per
subcomponent that fired during the harvest: its densities, the input and next tokens it fires on
(by recall and PMI) and its sampled firing examples, each token shaded by the subcomponent's CI
(hover for CI and activation; the firing token is outlined). A search box filters the cards by
subcomponent name or top token, and a menu sorts them by density. Both are plain inline
JavaScript and read their initial state from the URL (`page.html#q=2.mlp.down_proj:17&sort=asc`),
so a search can be linked to. Every piece of text from the corpus is HTML-escaped.
"""

from __future__ import annotations

import html
import re
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from vpd.utils.io import write_text

CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.3em; } h2 { font-size: 1.05em; margin: 0 0 .3em 0; }
table { border-collapse: collapse; } td, th { padding: .2em .6em; border-bottom: 1px solid #ddd; text-align: left; }
.controls { position: sticky; top: 0; background: #fff; padding: .5em 0; border-bottom: 1px solid #ccc; }
.controls input[type=search] { width: 28em; font-size: 1em; }
.sc { border: 1px solid #ccc; border-radius: 4px; padding: .6em; margin: .8em 0; }
.stats { color: #555; font-size: .9em; }
.toks { font-size: .85em; margin: .2em 0; }
.toks b { font-weight: 600; color: #444; }
.tk { font-family: ui-monospace, monospace; background: #eef; padding: 0 .2em; margin-right: .3em; white-space: pre; }
.ex { font-family: ui-monospace, monospace; font-size: .85em; margin: .15em 0; white-space: pre-wrap; line-height: 1.6; }
.t { white-space: pre; border-radius: 2px; }
.ex i { font-style: normal; white-space: pre; }
.t.fire { outline: 2px solid #c30; }
.dead { color: #777; font-size: .9em; }
"""

SCRIPT = """
(function () {
  var cards = Array.prototype.slice.call(document.querySelectorAll('.sc'));
  var box = document.getElementById('search'), sel = document.getElementById('sort');
  var list = document.getElementById('cards'), shown = document.getElementById('shown');
  function params() {
    var raw = (location.hash || '').replace(/^#/, '') || (location.search || '').replace(/^\\?/, '');
    var out = {};
    raw.split('&').forEach(function (kv) {
      if (!kv) return;
      var i = kv.indexOf('='), k = i < 0 ? kv : kv.slice(0, i), v = i < 0 ? '' : kv.slice(i + 1);
      try { out[decodeURIComponent(k)] = decodeURIComponent(v.replace(/\\+/g, ' ')); } catch (e) {}
    });
    return out;
  }
  function apply() {
    var q = box.value.trim().toLowerCase(), n = 0;
    var exact = cards.filter(function (c) { return c.dataset.name.toLowerCase() === q; });
    var terms = q.split(/\\s+/).filter(Boolean);
    cards.forEach(function (c) {
      var hay = (c.dataset.name + ' ' + c.dataset.tokens).toLowerCase();
      var ok = exact.length ? exact.indexOf(c) >= 0 : terms.every(function (t) { return hay.indexOf(t) >= 0; });
      c.hidden = !ok;
      if (ok) n += 1;
    });
    var key = sel.value;
    var sorted = cards.slice().sort(function (a, b) {
      if (key === 'index') return (+a.dataset.c) - (+b.dataset.c);
      var d = (+b.dataset.density) - (+a.dataset.density);
      return key === 'asc' ? -d : d;
    });
    sorted.forEach(function (c) { list.appendChild(c); });
    shown.textContent = n + ' of ' + cards.length + ' shown';
    document.body.setAttribute('data-query', q);
  }
  function update() {
    apply();
    var h = '#q=' + encodeURIComponent(box.value) + '&sort=' + sel.value;
    if (history.replaceState) history.replaceState(null, '', h);
  }
  var p = params();
  if (p.q !== undefined) box.value = p.q;
  if (p.sort && ['desc', 'asc', 'index'].indexOf(p.sort) >= 0) sel.value = p.sort;
  box.addEventListener('input', update);
  sel.addEventListener('change', update);
  window.addEventListener('hashchange', function () {
    var p2 = params(); if (p2.q !== undefined) box.value = p2.q; if (p2.sort) sel.value = p2.sort; apply();
  });
  apply();
})();
"""

INDEX_SCRIPT = """
(function () {
  var box = document.getElementById('search'), rows = document.querySelectorAll('tr.m');
  function apply() {
    var q = box.value.trim().toLowerCase();
    rows.forEach(function (r) { r.hidden = q && r.dataset.name.toLowerCase().indexOf(q) < 0; });
  }
  box.addEventListener('input', apply);
  apply();
})();
"""


def esc(text) -> str:
    """HTML-escape any value for use in text or in a double-quoted attribute."""
    return html.escape(str(text), quote=True)


def visible(text: str) -> str:
    """Token text with line breaks and tabs shown as symbols (so an example stays on one line)."""
    return text.replace("\r", "\u240d").replace("\n", "\u21b5").replace("\t", "\u2192")


def page_name(matrix: str) -> str:
    """File name of a matrix's page: the matrix name with anything unusual replaced."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", matrix) + ".html"


def _page(title: str, body: str, script: str) -> str:
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<title>{esc(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n{body}\n"
        f"<script>{script}</script>\n</body>\n</html>\n"
    )


def _token_span(text: str, ci: float, act: float, fire: bool) -> str:
    """One token of an example. Tokens with CI <= 0.005 (most of the context) get short markup
    without a tooltip, which keeps pages of many examples small."""
    shown = esc(visible(text))
    if not fire and not (np.isfinite(ci) and ci > 0.005):
        return f"<i>{shown}</i>"
    ci_v = 0.0 if not np.isfinite(ci) else float(np.clip(ci, 0.0, 1.0))
    cls = "t fire" if fire else "t"
    title = f"CI {ci:.3f}, act {act:.3f}"
    return f'<span class="{cls}" style="background:rgba(230,90,20,{ci_v:.2f})" title="{esc(title)}">{shown}</span>'


def _example_html(row, vocab: Sequence[str]) -> str:
    spans = []
    for i, (t, ci, act) in enumerate(zip(row.tokens, row.ci, row.act)):
        spans.append(_token_span(vocab[int(t)], float(ci), float(act), i == int(row.offset)))
    return f'<div class="ex" data-window="{int(row.window)}" data-position="{int(row.position)}">{"".join(spans)}</div>'


def _token_list(stats: pd.DataFrame, vocab: Sequence[str], metric: str) -> str:
    items = []
    for r in stats.itertuples():
        value = r.recall if metric == "recall" else r.pmi
        tip = f"count {r.count}, recall {r.recall:.3f}, precision {r.precision:.3f}, PMI {r.pmi:.2f}"
        items.append(f'<span class="tk" title="{esc(tip)}">{esc(visible(vocab[int(r.token_id)]))}</span>'
                     f'<span class="stats">{value:.2f}</span> ')
    return "".join(items) or '<span class="stats">none</span>'


def _card(sub, examples: pd.DataFrame, stats: pd.DataFrame, vocab: Sequence[str]) -> str:
    parts = []
    for kind, label in (("input", "fires on"), ("next", "next token")):
        for metric in ("recall", "pmi"):
            s = stats[(stats["kind"] == kind) & (stats["rank_by"] == metric)].sort_values("rank")
            parts.append(f'<div class="toks"><b>{label} (by {metric}):</b> {_token_list(s, vocab, metric)}</div>')
    top = stats[(stats["kind"] == "input") & (stats["rank_by"] == "recall")].sort_values("rank")
    token_words = " ".join(vocab[int(t)].strip() for t in top["token_id"])
    exs = "".join(_example_html(r, vocab) for r in examples.sort_values("rank").itertuples())
    head = (f'<h2>{esc(sub.name)}</h2><div class="stats">density (CI&gt;{esc(sub.threshold)}) {sub.density:.3g} '
            f'&middot; density (CI&gt;0) {sub.density_ci0:.3g} &middot; firings {int(sub.n_fire)} '
            f'&middot; mean CI {sub.mean_ci:.3g}</div>')
    return (f'<section class="sc" id="sc-{int(sub.c)}" data-name="{esc(sub.name)}" data-c="{int(sub.c)}" '
            f'data-density="{float(sub.density):.9g}" data-tokens="{esc(token_words)}">\n{head}\n'
            + "\n".join(parts) + f'\n<div class="examples">{exs}</div>\n</section>')


def render_matrix_page(matrix: str, subs: pd.DataFrame, examples: pd.DataFrame, stats: pd.DataFrame,
                       vocab: Sequence[str], meta: dict) -> str:
    thr = meta.get("fire_threshold", 0.1)
    alive = subs[(subs["n_fire"] > 0) | (subs["density_ci0"] > 0)].assign(threshold=thr)
    alive = alive.sort_values("density", ascending=False)
    ex_by = {c: g for c, g in examples.groupby("c")}
    st_by = {c: g for c, g in stats.groupby("c")}
    empty_ex, empty_st = examples.iloc[0:0], stats.iloc[0:0]
    cards = "\n".join(_card(s, ex_by.get(s.c, empty_ex), st_by.get(s.c, empty_st), vocab) for s in alive.itertuples())
    n_dead = len(subs) - len(alive)
    body = (
        f'<p><a href="index.html">&larr; all matrices</a></p>\n<h1>{esc(matrix)}</h1>\n'
        f'<p class="stats">{len(subs)} subcomponents; {len(alive)} with CI &gt; 0 on some harvested token '
        f'({meta.get("n_tokens", "?")} tokens); examples: a uniform sample of up to {meta.get("n_examples", "?")} '
        f'tokens with CI &gt; {esc(thr)}, shaded by CI.</p>\n'
        '<div class="controls"><input type="search" id="search" placeholder="search: name (e.g. '
        f'{esc(alive["name"].iloc[0] if len(alive) else matrix)}) or token" autocomplete="off"> '
        '<label>sort <select id="sort"><option value="desc">density, high first</option>'
        '<option value="asc">density, low first</option><option value="index">index</option></select></label> '
        '<span id="shown" class="stats"></span></div>\n'
        f'<div id="cards">\n{cards}\n</div>\n'
        f'<p class="dead">{n_dead} subcomponents never had CI &gt; 0 on the harvested tokens (not shown).</p>'
    )
    return _page(f"{matrix}: subcomponents", body, SCRIPT)


def render_index(subs: pd.DataFrame, meta: dict) -> str:
    rows = []
    for matrix, g in subs.groupby("matrix", sort=False):
        alive = int((g["n_fire"] > 0).sum())
        rows.append(
            f'<tr class="m" data-name="{esc(matrix)}"><td><a href="{esc(page_name(matrix))}">{esc(matrix)}</a></td>'
            f'<td>{len(g)}</td><td>{alive}</td><td>{g["density"].sum():.3g}</td><td>{g["density_ci0"].sum():.3g}</td></tr>'
        )
    body = (
        "<h1>VPD component browser</h1>\n"
        f'<p class="stats">{meta.get("n_windows", "?")} held-out windows of {meta.get("seq_len", "?")} tokens '
        f'({meta.get("n_tokens", "?")} tokens). A subcomponent fires where its CI &gt; {esc(meta.get("fire_threshold", 0.1))}. '
        "L0 = mean number of firing subcomponents per token.</p>\n"
        '<div class="controls"><input type="search" id="search" placeholder="filter matrices" autocomplete="off"></div>\n'
        "<table><thead><tr><th>matrix</th><th>C</th><th>firing at least once</th><th>L0 (CI&gt;threshold)</th>"
        "<th>L0 (CI&gt;0)</th></tr></thead>\n<tbody>\n" + "\n".join(rows) + "\n</tbody></table>"
    )
    return _page("VPD component browser", body, INDEX_SCRIPT)


def render_browser(result, vocab: Sequence[str], out_dir: str | Path) -> list[Path]:
    """Write index.html and one page per matrix from a HarvestResult; returns the written paths."""
    out_dir = Path(out_dir)
    subs, ex, st = result.subcomponents, result.examples, result.token_stats
    written = [out_dir / "index.html"]
    write_text(written[0], render_index(subs, result.meta))
    for matrix, g in subs.groupby("matrix", sort=False):
        path = out_dir / page_name(matrix)
        write_text(path, render_matrix_page(matrix, g, ex[ex["matrix"] == matrix], st[st["matrix"] == matrix],
                                            vocab, result.meta))
        written.append(path)
    return written
