"""One module per paper method, each a training-method dataclass whose defaults are the paper's
settings plus the small functions it needs:

- CARTL: ``fdm`` (feature-distance minimisation on the source), ``neft`` (non-expansive fine-tuning);
- Shafahi et al.: ``lwf`` (learning without forgetting, also CARTL's baseline), ``probes`` (probes
  and MLP heads on a frozen extractor);
- Vaishnavi et al.: ``simclr``, ``consistency`` (and Gaussian-noise training);
- Provably Robust Transfer: ``lipschitz`` (Lipschitz heads), ``search`` (adversarial
  representations), ``smoothadv``.

The generic methods (standard and adversarial training) and the loop live in ``rtlkit.train.loop``.
"""
