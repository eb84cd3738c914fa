"""Importing (and exporting) pretrained PyTorch DiT weights; see `torch_dit` for the key mapping."""
from adaflow.convert.torch_dit import (LAYOUTS, adaflow_to_torch, convert_file, describe_checkpoint,
                                       load_state_dict, torch_to_adaflow, write_checkpoint)
