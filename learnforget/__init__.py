"""learnforget: how much a causal LM learns and forgets under LoRA versus full finetuning."""

__version__ = "0.1.0"
