"""Policies: causal LMs by Hugging Face id or path with a LoRA adapter (peft), the built-in
warm-start model, adapter state in and out, and seeded batched sampling."""
