"""laffi: fine-tune language models on natural-language feedback (LaFFi, Li et al. 2024, arXiv 2401.00907).

Importing this package is cheap: torch and transformers are imported only by the stages that need them.
"""

__version__ = "0.1.0"
