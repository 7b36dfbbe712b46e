"""The A1111 "parameters" text, read back the way A1111's own "PNG info" parses it (its `re_param` pattern and
its prompt / "Negative prompt:" / last-line split, restated here from the format)."""

import json
import re

from facestudio.labels.parameters import a1111_parameters

# A1111's parse_generation_parameters: the pattern of one "Key: value" entry of the last line
PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')


def parse(text: str) -> tuple[str, str, dict]:
    *lines, last = text.strip().split("\n")
    if len(PARAM.findall(last)) < 3:
        lines.append(last)
        last = ""
    prompt, negative, in_negative = [], [], False
    for line in lines:
        if line.startswith("Negative prompt:"):
            in_negative, line = True, line[len("Negative prompt:"):].strip()
        (negative if in_negative else prompt).append(line)
    entries = {k: json.loads(v) if v.startswith('"') and v.endswith('"') else v for k, v in PARAM.findall(last)}
    return "\n".join(prompt), "\n".join(negative), entries


METADATA = {
    "prompt": "a portrait of a man, oil painting", "negative_prompt": "blurry, lowres", "steps": 25,
    "scheduler": "EulerAncestralDiscreteScheduler", "text_guidance_scale": 7.0, "reference_guidance_scale": 5.5,
    "seed": 1, "width": 512, "height": 768, "base_model": "stable-diffusion-v1-5/stable-diffusion-v1-5",
    "identities": [{"name": "obama", "strength": 1.0, "region": [0, 0, 256, 768]},
                   {"name": "biden", "strength": 0.8, "region": None}],
    "regions": "auto", "adapters": ["identity"], "software": "facestudio 0.1.0", "mix": None,
}


def test_standard_entries_in_a1111_order_and_format():
    text = a1111_parameters(METADATA)
    lines = text.split("\n")
    assert lines[0] == "a portrait of a man, oil painting"
    assert lines[1] == "Negative prompt: blurry, lowres"
    assert lines[2].startswith("Steps: 25, Sampler: Euler a, Schedule type: Automatic, CFG scale: 7, Seed: 1, "
                               "Size: 512x768, Model: stable-diffusion-v1-5/stable-diffusion-v1-5, ")
    assert len(lines) == 3


def test_read_back_with_a1111s_parser():
    prompt, negative, entries = parse(a1111_parameters(METADATA))
    assert (prompt, negative) == (METADATA["prompt"], METADATA["negative_prompt"])
    assert entries["Steps"] == "25" and entries["Seed"] == "1" and entries["Size"] == "512x768"
    assert entries["FaceStudio identities"] == "obama, biden"
    assert entries["FaceStudio strengths"] == "1, 0.8"
    assert json.loads(entries["FaceStudio regions"]) == [[0, 0, 256, 768], None]
    assert entries["FaceStudio reference scale"] == "5.5"
    assert entries["FaceStudio adapters"] == "identity"
    assert entries["Version"] == "facestudio 0.1.0"
    assert "FaceStudio mix" not in entries  # no mix: no entry


def test_values_with_commas_colons_and_quotes_survive():
    metadata = {**METADATA, "identities": [{"name": 'Dr. "Who", the: one', "strength": 1.0}],
                "base_model": "./models/my, model.safetensors", "mix": None}
    _, _, entries = parse(a1111_parameters(metadata))
    assert entries["FaceStudio identities"] == 'Dr. "Who", the: one'
    assert entries["Model"] == "my, model"


def test_schedulers_named_as_a1111_does_and_no_negative_line_without_one():
    text = a1111_parameters({"prompt": "x", "steps": 4, "scheduler": "dpmpp-2m-karras", "seed": 0,
                             "text_guidance_scale": 1.5, "width": 64, "height": 64, "mix": [0.5, 0.5],
                             "identities": ["a", "b"]})
    assert text.split("\n")[1].startswith("Steps: 4, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 1.5, ")
    assert "Negative prompt" not in text
    assert parse(text)[2]["FaceStudio mix"] == "0.5, 0.5"
