"""Applications of a decomposition: harvest and browser, emoticon edit, attribution graphs, attention q/k pairs."""
