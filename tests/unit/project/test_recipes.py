"""Every training recipe under pipelines/ loads as a `TrainConfig` (a typo in a recipe would
otherwise surface minutes into a pipeline), and each post-training recipe matches the base it forks
(`--init` refuses another architecture or objective)."""

from __future__ import annotations

import pytest
from helpers.cli import REPO

from lplkit.diffusion.denoisers import list_models
from lplkit.train.run_dir import resolve_train_config as resolve_config

ROOT = REPO
RECIPES = sorted(
    p for p in (ROOT / "pipelines").rglob("*.toml") if p.parent.name != "tiny-ae"
)  # tiny-ae/config.toml configures the AE trainer, not `lplkit train`
# (pre-training recipe, post-training recipe that forks its result)
PAIRS = [
    ("openmoji-base/pretrain.toml", "openmoji-lpl/post-flow.toml"),
    ("openmoji-base/pretrain-eps.toml", "openmoji-lpl/post-eps.toml"),
    ("openmoji-lpl/gpu128-pretrain.toml", "openmoji-lpl/gpu128-post.toml"),
    ("openmoji-t2i/gpu128-pretrain.toml", "openmoji-t2i/gpu128-post.toml"),
]


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: str(p.relative_to(ROOT / "pipelines")))
def test_recipe_loads_and_names_a_registered_model(recipe):
    cfg = resolve_config(str(recipe), [], {})
    assert cfg.model.name in list_models()
    assert cfg.steps >= 1 and cfg.batch_size >= 1


@pytest.mark.parametrize("pre,post", PAIRS)
def test_post_training_recipe_matches_its_base(pre, post):
    a = resolve_config(str(ROOT / "pipelines" / pre), [], {})
    b = resolve_config(str(ROOT / "pipelines" / post), [], {})
    assert a.model.name == b.model.name
    assert a.model.text_encoder == b.model.text_encoder  # --init checks the text outputs too
    assert a.objective == b.objective
    assert not a.lpl.enabled and not b.lpl.enabled  # the arms switch the LPL on by flag


def test_the_pairs_cover_every_post_training_recipe():
    posts = {p.relative_to(ROOT / "pipelines").as_posix() for p in RECIPES if "post" in p.name}
    assert posts == {post for _, post in PAIRS}
