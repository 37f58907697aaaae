"""CHAIR: the section-8 caption cases, both data layouts, and the offline NLTK pieces it rests on."""

from __future__ import annotations

import gzip
import hashlib
import math
import shutil
from pathlib import Path

import pytest
from task_fixtures import hf_image, write_coco, write_jsonl, write_parquet

from var_core.errors import ConfigError
from workers.tasks import DataError, get_task

pytestmark = pytest.mark.usefixtures("wordnet")

# image id: (instance categories, reference captions)
IMAGES = {
    1: ([1], ["A person standing."]),  # GT {person}
    2: ([58], ["A hot dog on a plate."]),  # GT {hot dog}
    3: ([70], ["A white toilet."]),  # GT {toilet}
    4: ([18], ["A dog near a surfboard."]),  # GT {dog, surfboard}: surfboard only from the caption
}
CAPTIONS = {
    "1": "A man is walking two dogs. The dogs are brown.",  # synonym man->person; plural dogs, twice hallucinated
    "2": "A hot dog next to a baby elephant.",  # double words: hot dog, baby elephant -> elephant (not person)
    "3": "The toilet seat is up and the seat is white.",  # toilet seat -> toilet; lone seat dropped (not chair)
    "4": "It is a sunny day.",  # no object at all
}


def check_section8(metrics: dict[str, float]) -> None:
    assert metrics["chair_s"] == 0.5  # captions 1 and 2 hallucinate
    assert metrics["chair_i"] == 0.5  # 3 hallucinated (dog, dog, elephant) of 6 mentions
    assert metrics["recall"] == 0.6  # person, hot dog, toilet of 5 GT objects
    assert metrics["mean_words"] == (12 + 7 + 10 + 6) / 4
    assert metrics["chair_s_stderr"] == pytest.approx(math.sqrt(1 / 3) / 2)  # sd of [1, 1, 0, 0] / 2


def test_section8_coco_layout(tmp_path):
    task = get_task("chair", write_coco(tmp_path, IMAGES))
    assert [e.id for e in task.examples] == ["1", "2", "3", "4"]
    assert [e.references for e in task.examples] == [
        ("person",),
        ("hot dog",),
        ("toilet",),
        ("dog", "surfboard"),
    ]
    assert task.metadata["layout"] == "coco" and task.metadata["caption_parser"] == "builtin"
    assert task.text(task.examples[0]) == "Please describe this image in detail."
    assert task.examples[0].image.path == tmp_path / "val2014" / "COCO_val2014_000000000001.jpg"
    check_section8(task.score(CAPTIONS))


def test_section8_lmms_eval_layout(tmp_path):
    rows = [
        {"question_id": str(i), "gt_object": gt, "image": hf_image()}
        for i, gt in ((1, ["person"]), (2, ["hot dog"]), (3, ["toilet"]), (4, ["dog", "surfboard"]))
    ]
    write_parquet(tmp_path / "data" / "test-00000-of-00001.parquet", rows)
    task = get_task("chair", tmp_path)
    assert task.metadata["layout"] == "lmms-eval"
    check_section8(task.score(CAPTIONS))
    task.check_images()


def test_caption_parser_quirks():
    from workers.tasks._chair_text import caption_parser

    parse = caption_parser().parse
    assert parse("A man is seated.").node_words == ("person", "chair")  # tagged VBN -> lemma seat -> chair
    assert parse("A motor bike and a motorbike.").node_words == ("motorcycle",)  # " motor bike" never matches
    assert parse("Two people skiing near a baby bird and a passenger jet.").node_words == (
        "person",
        "skis",
        "bird",
        "airplane",
    )
    assert parse("A dining table.").node_words == ("dining table",)


def test_image_list_and_options(tmp_path):
    write_coco(tmp_path, IMAGES, train=False)
    opera = write_jsonl(
        tmp_path / "greedy.jsonl", [{"image_id": 3, "caption": "x"}, {"image_id": 1, "caption": "y"}]
    )
    task = get_task("chair", tmp_path, image_list=opera, max_new_tokens=64)
    assert [e.id for e in task.examples] == ["3", "1"] and task.max_new_tokens == 64
    (tmp_path / "ids.txt").write_text("4\n2\n")
    assert [e.id for e in get_task("chair", tmp_path, image_list=tmp_path / "ids.txt", limit=1).examples] == [
        "4"
    ]
    (tmp_path / "ids.txt").write_text("4\n99\n")
    with pytest.raises(DataError, match=r"instances_val2014.json: listed image id\(s\) not among its images"):
        get_task("chair", tmp_path, image_list=tmp_path / "ids.txt")
    with pytest.raises(DataError, match="caption parser 'spacy'"):
        get_task("chair", tmp_path, parser="spacy")


def test_bad_data_is_named(tmp_path):
    with pytest.raises(DataError, match="no instances_val2014.json"):
        get_task("chair", tmp_path)
    rows = [
        {"question_id": 1, "gt_object": ["person"], "image": hf_image()},
        {"question_id": 2, "gt_object": ["unicorn"], "image": hf_image()},
    ]
    write_parquet(tmp_path / "chair.parquet", rows)
    with pytest.raises(DataError, match="chair.parquet row 2: 'unicorn' is not a COCO object word"):
        get_task("chair", tmp_path)
    with pytest.raises(ConfigError, match="image_list and image_dir apply to the COCO layout"):
        get_task("chair", tmp_path, image_list=tmp_path / "x.txt")
    coco = write_coco(tmp_path / "coco", {1: ([99], ["A cat."])})
    with pytest.raises(DataError, match=r"instances_val2014.json annotations item 1: category_id 99 is not"):
        get_task("chair", coco)


@pytest.mark.filterwarnings("ignore:The multilingual functions are not available")
def test_morphy_equals_nltks_wordnet_lemmatizer(tmp_path, monkeypatch):
    """Our lemmatiser against NLTK's own WordNetCorpusReader on the same WordNet files.

    Debian's wordnet-base lacks ``lexnames`` (only used for synset lexnames, which lemmatising never reads),
    so the reader is given a stand-in one, and its multilingual (OMW) version mapping, which would load NLTK's
    own wordnet package, is switched off.
    """
    import nltk.data
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    from workers.tasks._chair_text import _NODE_OF
    from workers.tasks._wordnet import find_wordnet, load_wordnet

    source = find_wordnet()
    if not isinstance(source, Path):
        pytest.skip(
            "WordNet is inside an NLTK zip; NLTK's own reader is then what CHAIR's original uses anyway"
        )
    root = tmp_path / "wordnet"
    root.mkdir()
    for path in source.iterdir():
        shutil.copyfile(path, root / path.name)  # copies: nltk refuses symlinks out of its sandbox
    if not (root / "lexnames").exists():
        (root / "lexnames").write_text("".join(f"{i:02d}\tlex.{i}\t0\n" for i in range(45)))
    monkeypatch.setattr(nltk.data, "path", [str(tmp_path), *nltk.data.path])  # nltk's path sandbox
    monkeypatch.setattr(
        WordNetCorpusReader, "map_wn", lambda self, version="wordnet": None
    )  # OMW mapping only
    nltk_reader = WordNetCorpusReader(str(root), None)
    ours = load_wordnet()
    words = {w for w in _NODE_OF if " " not in w}
    words |= {w + s for w in list(words) for s in ("s", "es")}
    words |= {
        "mice",
        "geese",
        "children",
        "people",
        "knives",
        "oxen",
        "skiing",
        "seated",
        "tied",
        "glasses",
        "buses",
        "boxes",
        "ladies",
        "leaves",
        "running",
        "better",
        "biggest",
        "feet",
        "teeth",
        "ran",
    }
    for word in sorted(words):
        for pos in ("n", "v", "a", "r"):
            theirs = nltk_reader._morphy(word, pos)
            assert ours.candidates(word, pos) == theirs, (word, pos)
            assert ours.lemmatize(word, pos) == (min(theirs, key=len) if theirs else word)


def test_vendored_tagger_is_the_vetted_one():
    from workers.tasks import _chair_text

    blob = _chair_text.TAGGER_FILE.read_bytes()
    assert hashlib.sha256(blob).hexdigest() == _chair_text.TAGGER_SHA256
    weights, tagdict, classes = __import__("json").loads(gzip.decompress(blob))
    assert len(classes) == 45 and len(tagdict) == 1549 and len(weights) == 75447
    tag = _chair_text._builtin_tagger()
    # nltk:tag/perceptron.py PerceptronTagger docstring, with the official model
    assert tag("The quick brown fox jumps over the lazy dog") == [
        ("The", "DT"),
        ("quick", "JJ"),
        ("brown", "NN"),
        ("fox", "NN"),
        ("jumps", "VBZ"),
        ("over", "IN"),
        ("the", "DT"),
        ("lazy", "JJ"),
        ("dog", "NN"),
    ]


def test_tampered_tagger_and_missing_wordnet_are_clear(tmp_path, monkeypatch):
    from workers.tasks import _chair_text, _wordnet

    fake = tmp_path / "perceptron_tagger_eng.json.gz"
    fake.write_bytes(gzip.compress(b"[{}, {}, []]"))
    monkeypatch.setattr(_chair_text, "TAGGER_FILE", fake)
    with pytest.raises(DataError, match="is not the vetted"):
        _chair_text._builtin_tagger.__wrapped__()
    monkeypatch.setattr(_wordnet, "find_wordnet", lambda: None)
    with pytest.raises(DataError, match="apt-get install wordnet-base"):
        _wordnet.load_wordnet.__wrapped__()


def test_nltk_parser_needs_nltk_data(monkeypatch):
    import nltk

    from workers.tasks import _chair_text

    def absent(resource, *args, **kwargs):
        raise LookupError(resource)

    monkeypatch.setattr(nltk.data, "find", absent)
    with pytest.raises(DataError, match="python -m nltk.downloader punkt_tab averaged_perceptron_tagger_eng"):
        _chair_text._nltk_tagger.__wrapped__()
