"""One module per notebook: its STUDY declaration, its experiment steps (each returns a tidy
DataFrame from cached runs), its paper numbers, plots, widget panel and findings. Notebook 0N
imports only its study and ``rtlkit.suite.session``.

- ``your_transfer``: 00, your checkpoint and images; ``layer_freezing``: 01, CARTL Fig. 3 + Shafahi Fig. 1;
- ``bn_ablation``: 02, CARTL Table 1; ``cartl``: 03, CARTL Tables 2-5 and Figs. 4-5;
- ``pretraining``: 04, Vaishnavi et al.; ``provable``: 05, Provably Robust Transfer;
- ``shafahi``: 06, Shafahi et al.; ``report_cards``: 07, a card for each study's headline model;
- ``common`` (Study, the source's robustness, a result row), ``profiles`` (the settings at five
  scales), ``plots`` and ``widgets``: what they share.

A new study gets a module here, its notebook and one line in ``rtlkit.suite.registry``; a new paper
method goes in ``rtlkit.train.methods``.
"""
