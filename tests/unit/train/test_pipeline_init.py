"""Class matching and scheduler reading of `--init` from a diffusers checkpoint, by hand-built cases."""

from __future__ import annotations

import re

import pytest

from lplkit.errors import ConfigError
from lplkit.train.pipeline_init import is_pipeline_spec, match_classes, objective_of_scheduler

# ImageNet's list names two classes "crane" (134, 517); a small stand-in with the same trap
LABELS = {"0": "tench, Tinca tinca", "1": "crane", "2": "goldfish", "3": "crane", "4": "maillot",
          "5": "maillot, tank suit"}  # fmt: skip


def test_the_checkpoints_own_list_in_order_is_the_identity_even_with_duplicate_names():
    assert match_classes(list(LABELS.values()), 6, LABELS, 6) == (6, None)
    # a prefix in order keeps its ids; the store's null id (3) maps to the checkpoint's (6)
    assert match_classes(["tench, Tinca tinca", "crane", "goldfish"], 3, LABELS, 6) == (
        3,
        [0, 1, 2, 6],
    )


def test_subset_in_another_order_is_remapped_by_full_label_then_unique_synonym():
    assert match_classes(["goldfish", "tench"], 2, LABELS, 6) == (2, [2, 0, 6])
    # "tank suit" is a synonym of 5 only; "maillot" is the full label of 4 (and a synonym of 5)
    assert match_classes(["tank suit", "maillot"], 2, LABELS, 6) == (2, [5, 4, 6])


@pytest.mark.parametrize(("names", "why"), [(["goldfish", "unicorn"], "'unicorn' (unknown)"),
                                             (["goldfish", "crane"], "'crane' (ambiguous)")])  # fmt: skip
def test_unknown_or_ambiguous_names_are_refused(names, why):
    with pytest.raises(ConfigError, match="store classes not in .*" + re.escape(why)):
        match_classes(names, 2, LABELS, 6)


def test_unlabelled_store_on_a_conditional_checkpoint_is_refused():
    with pytest.raises(ConfigError, match="no labels"):
        match_classes(None, None, LABELS, 6)


def test_without_names_classes_match_by_id_with_a_warning():
    with pytest.warns(UserWarning, match="matched by id"):
        assert match_classes(None, 3, LABELS, 6) == (3, [0, 1, 2, 6])
    with pytest.warns(UserWarning), pytest.raises(ConfigError, match="7 classes"):
        match_classes(None, 7, LABELS, 6)


def test_scheduler_configs_name_the_objective():
    dit = {"_class_name": "DDIMScheduler", "beta_schedule": "linear", "beta_start": 0.0001,
           "beta_end": 0.02, "num_train_timesteps": 1000, "prediction_type": "epsilon"}  # fmt: skip
    assert objective_of_scheduler(dit) == {"kind": "eps", "schedule": "linear",
                                           "num_train_timesteps": 1000, "beta_start": 0.0001,
                                           "beta_end": 0.02}  # fmt: skip
    assert objective_of_scheduler({**dit, "prediction_type": "v_prediction"})["kind"] == "v"
    assert objective_of_scheduler({"_class_name": "FlowMatchEulerDiscreteScheduler"}) == {
        "kind": "flow"
    }
    with pytest.raises(ConfigError, match="'sample'"):
        objective_of_scheduler({**dit, "prediction_type": "sample"})


def test_specs_that_are_checkpoints(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text("{}")
    pipe = tmp_path / "pipe"
    (pipe / "transformer").mkdir(parents=True)
    (pipe / "model_index.json").write_text("{}")
    assert not is_pipeline_spec(str(run)) and not is_pipeline_spec("openmoji-base")
    assert is_pipeline_spec(str(pipe)) and is_pipeline_spec("facebook/DiT-XL-2-256")
    assert is_pipeline_spec("facebook/DiT-XL-2-256:transformer")
