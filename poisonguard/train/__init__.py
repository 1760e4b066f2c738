"""Fine-tuning (full, partial or LoRA), greedy generation, and the clean-accuracy and attack-success metrics."""
