"""PyTorch modules of every ported network, state_dict-compatible with the
official checkpoints (written for this project, checked on the golden cases)."""
