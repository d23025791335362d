"""One module per paper method, each a training-method dataclass whose defaults are the paper's
settings plus the small functions it needs:

- ``fdm``: CARTL's feature-distance minimisation while adversarially training the source;
- ``neft``: CARTL's non-expansive fine-tuning (spectral-norm parametrisation, convex residuals);
- ``lwf``: learning without forgetting on the penultimate feature (Shafahi et al.; CARTL's baseline).

The generic methods (standard and adversarial training) and the loop live in ``rtlkit.train.loop``.
"""
