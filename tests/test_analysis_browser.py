"""Component browser: escaped static HTML; in headless Chromium a search shows one subcomponent's examples."""

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import torch

from vpd.analysis.browser import page_name, render_browser
from vpd.analysis.config import HarvestConfig
from vpd.analysis.harvest import harvest
from test_analysis_harvest import tiny_decomposition

EVIL = '<script>alert("x")</script>'
CHROMIUM = next((p for p in (os.environ.get("CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium"),
                             shutil.which("chromium-browser")) if p and Path(p).exists()), None)
SECTION = re.compile(r'<section class="sc"([^>]*)>')


@pytest.fixture(scope="module")
def browser_dir(tmp_path_factory):
    dec = tiny_decomposition()
    windows = torch.randint(0, 40, (12, 13), generator=torch.Generator().manual_seed(5))
    res = harvest(dec, windows, HarvestConfig(n_examples=3, context=4, batch_size=6, top_k_tokens=3), seed=0, vocab_size=300)
    vocab = [f"tok{i}" for i in range(300)]
    vocab[int(windows[0, 0])] = EVIL  # corpus text that must never become markup
    vocab[int(windows[0, 1])] = 'a&b "q" \n'
    out = tmp_path_factory.mktemp("browser")
    render_browser(res, vocab, out)
    return out, res


def _attrs(tag_attrs: str) -> dict:
    return dict(re.findall(r'([\w-]+)="([^"]*)"', tag_attrs)) | {k: "" for k in re.findall(r'\s(hidden)(?:=""|\s|$)', tag_attrs)}


def test_pages_are_written_and_escaped(browser_dir):
    out, res = browser_dir
    assert (out / "index.html").exists()
    index = (out / "index.html").read_text()
    for matrix in res.subcomponents.matrix.unique():
        page = out / page_name(matrix)
        assert page.exists() and f'href="{page_name(matrix)}"' in index
        text = page.read_text()
        assert "<script>alert" not in text and EVIL not in text
        assert text.count("<script>") == 1  # only the page's own script
        alive = res.subcomponents[(res.subcomponents.matrix == matrix) & (res.subcomponents.density_ci0 > 0)]
        assert len(SECTION.findall(text)) == len(alive)
    assert any("&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in p.read_text() for p in out.glob("h.*.html"))


def _dump_dom(url: str) -> str:
    profile = tempfile.mkdtemp(prefix="vpd-chromium-")
    try:
        cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--no-first-run", "--disable-sync", "--disable-extensions",
               f"--user-data-dir={profile}", "--virtual-time-budget=2000", "--dump-dom", url]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=90)
        assert proc.returncode == 0, proc.stderr[-2000:]
        return proc.stdout
    finally:
        shutil.rmtree(profile, ignore_errors=True)


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium chromium-driver)")
def test_search_in_headless_chromium_shows_only_the_searched_subcomponent(browser_dir):
    out, res = browser_dir
    matrix = "h.0.mlp.down_proj"
    ex = res.examples[res.examples.matrix == matrix]
    c = int(ex.c.value_counts().index[0])
    name = f"0.mlp.down_proj:{c}"
    page = (out / page_name(matrix)).resolve()
    dom = _dump_dom(page.as_uri() + "#q=" + name + "&sort=asc")
    assert f'data-query="{name}"' in dom  # the page's script ran and read the query from the URL
    cards = [(m.start(), _attrs(m.group(1))) for m in SECTION.finditer(dom)]
    assert len(cards) > 1
    shown = [a for _, a in cards if "hidden" not in a]
    assert [a["data-name"] for a in shown] == [name]  # the searched card is visible, every other one hidden
    start = next(pos for pos, a in cards if a["data-name"] == name)
    end = dom.find("</section>", start)
    card = dom[start:end]
    assert card.count('class="ex"') == min(3, len(ex[ex.c == c]))  # its examples are in the card
    assert 'class="t fire"' in card
    assert re.search(r'id="shown"[^>]*>1 of \d+ shown<', dom)
    # sort=asc puts the cards in increasing density
    dens = [float(a["data-density"]) for _, a in cards]
    assert dens == sorted(dens)
    # a token search (no exact name) filters by top tokens: every shown card lists that token
    token = "tok" + str(int(res.token_stats[(res.token_stats.matrix == matrix)].token_id.iloc[0]))
    dom2 = _dump_dom(page.as_uri() + "#q=" + token)
    shown2 = [a for _, a in ((m.start(), _attrs(m.group(1))) for m in SECTION.finditer(dom2)) if "hidden" not in a]
    assert shown2 and all(token in a["data-tokens"] for a in shown2)
