"""Models: load HF causal LMs (+ LoRA), the policy forward, reference providers, generation,
sentence encoders, SparsePO activation masks."""
