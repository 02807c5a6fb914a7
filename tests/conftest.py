import copy
import json

import pytest
import torch

import tokenfocus  # noqa: F401  (sets the OpenMP wait policy before torch spins up its threads)

# Tiny models on a shared 2-core machine: one thread avoids oversubscription stalls.
torch.set_num_threads(1)

RAW_TRAIN = [
    {"prompt_id": "00110", "prompt": "a red circle left of a blue square", "type": "real",
     "img_path": "SDXL-Turbo/00110.png", "total_score": [4, 3, 4],
     "element_score": {"circle (object)": [1, 1, 1], "red (attribute-color)": [1, 0, 1],
                       "Lavender (Color) ": [0, 0, 0]},
     "promt_meaningless": [0, 0, 0], "split_confidence": [5, 4, 5], "attribute_confidence": [5, 5, 4],
     "fidelity_label": ["normal", "normal", "minor"]},
    {"prompt_id": "01191", "prompt": "two green stars", "type": "synthetic",
     "img_path": "SDXL/01191_1.png", "total_score": [2, 3, 2, 1, 2, 3],
     "element_score": "{'star (object)': [1, 1, 0, 1, 1, 1], 'two (counting)': [0, 0, 0, 1, 0, 0]}",
     "promt_meaningless": [0, 0, 1, 0, 0, 0], "split_confidence": [5, 5, 5, 4, 5, 5],
     "attribute_confidence": [4, 4, 4, 4, 4, 4], "fidelity_label": ["normal"] * 6},
]
RAW_TEST = [
    {"prompt_id": "val_0042", "prompt": "a dress (worn)", "img_path": "img_0042.png",
     "total_score": None, "element_score": {"dress (object-cloth&accessories)": None,
                                            "Monet (attribute-style-artist/works) ": None},
     "promt_meaningless": 0.0, "split_confidence": 4.67, "attribute_confidence": 5.0},
]


@pytest.fixture
def raw_train():
    return copy.deepcopy(RAW_TRAIN)


@pytest.fixture
def raw_test():
    return copy.deepcopy(RAW_TEST)


@pytest.fixture
def write_json(tmp_path):
    def _write(name, obj):
        p = tmp_path / name
        p.write_text(json.dumps(obj), encoding="utf-8")
        return p
    return _write
