"""Which text runs `lplkit export` maps to which diffusers pipeline (lplkit.export_text): the encoder
sets the pipelines' `encode_prompt` reproduce, and one-line refusals of every other set."""

from __future__ import annotations

import pytest

from lplkit.errors import ConfigError
from lplkit.export_text import PIXART, SD3, check_text_encoders, pipeline_call


def clip(name: str, width: int = 16, **kw):
    base = {"name": name, "class": "CLIPTextModelWithProjection", "family": "clip",
            "preset": "sd3-clip", "layer": "penultimate", "pass_mask": False, "max_tokens": 77,
            "hidden_size": width, "pooled_size": 8}  # fmt: skip
    return {**base, **kw}


def t5(name: str = "t5", width: int = 64, **kw):
    base = {"name": name, "class": "T5EncoderModel", "family": "t5", "preset": "sd3-t5",
            "layer": "last", "pass_mask": False, "max_tokens": 256, "hidden_size": width,
            "pooled_size": None}  # fmt: skip
    return {**base, **kw}


PIXART_T5 = t5("t5_pixart", preset="pixart-sigma-t5", pass_mask=True, max_tokens=300)


def test_sd3_set_in_any_recorded_order_maps_to_clip_l_clip_g_t5():
    for record in ([clip("l"), clip("g", 24), t5()], [t5(), clip("l"), clip("g", 24)]):
        pipeline, ordered = check_text_encoders("mmdit", "MMDiT-T/2", record)
        assert pipeline == SD3 and [e["name"] for e in ordered] == ["l", "g", "t5"]
    assert pipeline_call(SD3, ordered) == {"max_sequence_length": 256}


def test_pixart_takes_one_masked_t5():
    pipeline, ordered = check_text_encoders("pixart", "PixArt-T/2", [PIXART_T5])
    assert pipeline == PIXART and ordered == [PIXART_T5]
    assert pipeline_call(PIXART, ordered) == {"max_sequence_length": 300,
                                              "use_resolution_binning": False,
                                              "clean_caption": False}  # fmt: skip


@pytest.mark.parametrize(
    ("family", "record", "says"),
    [
        ("pixart", [clip("l")], "PixArtSigmaPipeline needs one T5 encoder"),
        ("pixart", [PIXART_T5, PIXART_T5], "PixArtSigmaPipeline needs one T5 encoder"),
        ("pixart", [t5()], "given the attention mask"),  # sd3-t5: T5 ran without the mask
        ("mmdit", [clip("l"), clip("g")], "StableDiffusion3Pipeline needs three encoders"),
        ("mmdit", [clip("l"), t5("t5a"), t5()], "needs three encoders"),
        ("mmdit", [clip("l", **{"class": "CLIPTextModel"}), clip("g"), t5()], "WithProjection"),
        ("mmdit", [clip("l", layer="last"), clip("g"), t5()], "penultimate layer"),
        ("mmdit", [clip("l", max_tokens=60), clip("g"), t5()], "the same --text-max-tokens"),
        ("mmdit", [clip("l"), clip("g"), t5(pass_mask=True)], "no mask"),
        ("mmdit", [clip("l", 40), clip("g", 40), t5(width=64)], "would cut them"),
        ("unet-text", [clip("l")], "StableDiffusionPipeline feeds its U-Net no cross-attention"),
    ],
)
def test_other_encoder_sets_are_refused_in_one_line(family, record, says):
    with pytest.raises(ConfigError) as exc:
        check_text_encoders(family, "M", record)
    assert says in str(exc.value) and "\n" not in str(exc.value)
