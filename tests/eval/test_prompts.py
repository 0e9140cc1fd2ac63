import json
import os

import pytest
from eval_helpers import PARTI

from diffusion_accel.eval.prompts import load_prompts


def test_text_file_one_prompt_per_line_skips_blank_lines(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("a cat\n\n  a dog  \n")
    prompts = load_prompts(path)
    assert [(p.text, p.index) for p in prompts] == [("a cat", 0), ("a dog", 2)]


def test_csv_named_column_and_category_filter(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("id,caption,kind\n1,a cat,animal\n2,a car,vehicle\n3,a dog,animal\n")
    assert [p.text for p in load_prompts(path, column="caption")] == ["a cat", "a car", "a dog"]
    got = load_prompts(path, column="caption", category_column="kind", categories=["animal"])
    assert [(p.text, p.index, p.category) for p in got] == [("a cat", 0, "animal"), ("a dog", 2, "animal")]


def test_json_and_jsonl(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps(["x one", "x two"]))
    (tmp_path / "b.json").write_text(json.dumps({"prompts": [{"prompt": "y", "category": "c"}]}))
    (tmp_path / "c.jsonl").write_text('{"text": "z1"}\n\n{"text": "z2"}\n')
    assert [p.text for p in load_prompts(tmp_path / "a.json")] == ["x one", "x two"]
    assert load_prompts(tmp_path / "b.json")[0].category == "c"
    assert [p.text for p in load_prompts(tmp_path / "c.jsonl")] == ["z1", "z2"]


def test_seeded_sampling_is_reproducible_and_keeps_source_order():
    source = [f"prompt {i}" for i in range(50)]
    a = load_prompts(source, num=10, seed=3)
    assert a == load_prompts(source, num=10, seed=3)
    assert a != load_prompts(source, num=10, seed=4)
    assert [p.index for p in a] == sorted(p.index for p in a)
    assert all(p.text == f"prompt {p.index}" for p in a)


@pytest.mark.skipif(not os.path.exists(PARTI), reason="PartiPrompts.tsv not available")
def test_parti_prompts_tsv_with_category():
    all_prompts = load_prompts(PARTI)
    assert len(all_prompts) > 1000
    animals = load_prompts(PARTI, categories=["Animals"], num=5, seed=0)
    assert len(animals) == 5 and all(p.category == "Animals" for p in animals)


def test_missing_column_names_the_columns(tmp_path):
    path = tmp_path / "p.tsv"
    path.write_text("Text2\tCategory\nhello\tA\n")
    with pytest.raises(ValueError, match=r"no prompt column.*Text2"):
        load_prompts(path)
    with pytest.raises(ValueError, match="no prompt column 'Prompt'"):
        load_prompts(path, column="Prompt")


@pytest.mark.parametrize("name,content", [("e.txt", "\n\n"), ("e.csv", "prompt\n"), ("e.json", "[]"),
                                          ("e.jsonl", "")])
def test_empty_prompt_file_is_one_clear_error(tmp_path, name, content):
    (tmp_path / name).write_text(content)
    with pytest.raises(ValueError, match="holds no prompts"):
        load_prompts(tmp_path / name)


def test_unknown_category_and_missing_file(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("prompt,category\na,x\n")
    with pytest.raises(ValueError, match=r"Unknown category \['y'\].*\['x'\]"):
        load_prompts(path, categories=["y"])
    with pytest.raises(ValueError, match="Cannot read prompt file"):
        load_prompts(tmp_path / "missing.txt")
