"""The midblock section of a saved adapter's model card: what was trained, and for an rsLoRA adapter
the warning that llama.cpp / SGLang read it wrongly unless it goes through ``midblock export``."""

from __future__ import annotations

from midblock_plugin.config import MidBlockConfig
from midblock_plugin.plan import build_plan
from midblock_plugin.testing import tiny_model
from midblock_plugin.training.model_card import BEGIN, END, RSLORA_SERVING_NOTE, write_model_card


def _saved(tmp_path, use_rslora):
    from peft import get_peft_model

    model = tiny_model("llama", num_layers=5)
    plan = build_plan(model, MidBlockConfig(segments="01110", rank=8, use_rslora=use_rslora))
    get_peft_model(model, plan.lora_config()).save_pretrained(tmp_path / "adapter")
    return plan, tmp_path / "adapter"


def test_rslora_adapter_card_says_to_serve_through_export(tmp_path):
    plan, adapter = _saved(tmp_path, use_rslora=True)
    peft_card = (adapter / "README.md").read_text()  # PEFT's own model card, kept
    path = write_model_card(adapter, plan)
    text = path.read_text()
    assert text.startswith(peft_card.rstrip("\n"))
    assert RSLORA_SERVING_NOTE in text and "midblock export --target llama.cpp" in text
    assert "layers 1-3 of 5" in text and "rank 13" in text and "--max-lora-rank 16" in text
    write_model_card(adapter, plan.to_json_dict())  # a second save replaces the section, once
    again = path.read_text()
    assert again.count(BEGIN) == again.count(END) == 1 and again == text


def test_plain_lora_card_has_no_rslora_note(tmp_path):
    plan, adapter = _saved(tmp_path, use_rslora=False)
    text = write_model_card(adapter, plan).read_text()
    assert BEGIN in text and "rank 13" in text
    assert RSLORA_SERVING_NOTE not in text and "rsLoRA" not in text
