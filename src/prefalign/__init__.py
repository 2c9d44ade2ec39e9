"""prefalign: preference alignment for Hugging Face causal LMs.

Kept light on purpose: importing the package (or prefalign.losses) does not import
transformers or accelerate.
"""

__version__ = "0.1.0"
