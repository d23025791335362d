"""One module per notebook: its experiment steps (each returns a tidy DataFrame from cached runs),
its plots and its widget panel. Notebook 0N imports only its study and ``rtlkit.suite.session``.

- ``layer_freezing``: 01, CARTL Fig. 3 + Shafahi Fig. 1;
- ``bn_ablation``: 02, CARTL Table 1;
- ``cartl``: 03, CARTL Tables 2-5 and Figs. 4-5;
- ``common``: what they share (the robust source's own robustness, a result row).

A new study gets a new module here and a notebook; a new paper method goes in ``rtlkit.train.methods``.
"""
