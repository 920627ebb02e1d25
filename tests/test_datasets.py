"""Annotation readers on tiny fake dataset trees: parsing, paths, fold membership, and every error message."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from tgdfer.data.datasets import (
    ABSENT,
    TEST,
    TRAIN,
    VAL,
    AnnotationError,
    read_annotations,
    read_csv,
    read_dfew,
    read_ferv39k,
    read_mafw,
)
from tgdfer.errors import ConfigError
from tgdfer.labels import CLASS_NAMES

DFEW_ANN = "EmoLabel_DataSplit"
FERV_ANN = "4_setups/All_scenes"
MAFW_ANN = "Train & Test Set/single/no_caption"


def write_tree(root: Path, files: dict[str, str | None], dirs: tuple[str, ...] = ()) -> Path:
    """Write text files (None: leave out) and empty folders under root."""
    for name, text in files.items():
        if text is not None:
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_text(text, encoding="utf-8")
    for name in dirs:
        (root / name).mkdir(parents=True, exist_ok=True)
    return root


def dfew_files(**changes: str | None) -> dict[str, str | None]:
    """Clips 1..6, clip n labelled n; fold k tests clip k and trains on the rest (clip 6 always trains).

    Train files write ids unpadded, test files zero-padded. ``changes`` swaps files: train1="...", test5=None.
    """
    files = {}
    for k in range(1, 6):
        train = "".join(f"{n},{n}\n" for n in range(1, 7) if n != k)
        files[f"train{k}"] = "video_name,label\n" + train
        files[f"test{k}"] = f"video_name,label\n{k:05d},{k}\n"
    files.update(changes)
    return {f"{DFEW_ANN}/{key[:-1]}(single-labeled)/set_{key[-1]}.csv": text for key, text in files.items()}


def make_dfew(root: Path, **changes: str | None) -> Path:
    root = write_tree(root, dfew_files(**changes), tuple(f"Clip/clip_224x224/0000{n}" for n in range(1, 5)))
    for name in ("00005.mp4", "00005.avi"):  # clip 5 has only original videos; clip 6 has nothing
        write_tree(root, {f"Clip/original/{name}": "x"})
    return root


def make_ferv(root: Path, train: str | None = None, test: str | None = None) -> Path:
    train = "Action/Sad/0010 Sad\nTalk/Happy/0001 Happy\nAction/Angry/0003 Angry\n" if train is None else train
    test = "Action/Fear/0002 Fear\n" if test is None else test
    return write_tree(root, {f"{FERV_ANN}/train_All.csv": train, f"{FERV_ANN}/test_All.csv": test})


def make_mafw(root: Path, train1: str | None = None) -> Path:
    files = {}
    for k in range(1, 6):
        files[f"{MAFW_ANN}/set_{k}/train.txt"] = "00025.mp4 happiness\n00026.mp4 contempt\n"
        files[f"{MAFW_ANN}/set_{k}/test.txt"] = "00027.mp4 Anger\n"
    if train1 is not None:
        files[f"{MAFW_ANN}/set_1/train.txt"] = train1
    return write_tree(root, files, ("data/frames/00025",))


def make_csv(root: Path, text: str) -> Path:
    return write_tree(root, {"annotations.csv": text}) / "annotations.csv"


def dfew_file(root: Path, key: str) -> str:
    return str(root / f"{DFEW_ANN}/{key[:-1]}(single-labeled)/set_{key[-1]}.csv")


def raises_at(file: Path | str, line: int | None, *phrases: str, call) -> AnnotationError:
    """Run call(), expect an AnnotationError at file:line whose message holds every phrase."""
    with pytest.raises(AnnotationError) as info:
        call()
    error = info.value
    assert error.file == str(file)
    assert error.line == line
    where = f"{file}:{line}:" if line is not None else f"{file}:"
    assert str(error).startswith(where), str(error)
    for phrase in phrases:
        assert phrase in str(error), (phrase, str(error))
    return error


# Parsing ------------------------------------------------------------------------------------------


def test_dfew_pool_labels_paths_and_folds(tmp_path):
    ann = read_dfew(make_dfew(tmp_path))
    assert ann.dataset == "dfew"
    assert ann.class_names == CLASS_NAMES["dfew"]
    assert ann.split_names == ("fold1", "fold2", "fold3", "fold4", "fold5")
    assert [c.id for c in ann.clips] == ["00001", "00002", "00003", "00004", "00005", "00006"]  # padded once
    assert [c.label for c in ann.clips] == [0, 1, 2, 3, 4, 5]  # 1..7 -> 0..6
    clip = tmp_path / "Clip" / "clip_224x224"
    assert ann.clips[0].path == str(clip / "00001")
    assert ann.clips[4].path == str(tmp_path / "Clip" / "original" / "00005.avi")  # first by sorted extension
    assert ann.clips[5].path == str(clip / "00006")  # missing: extraction records it
    assert ann.membership.dtype == np.int8
    expected = np.full((6, 5), TRAIN, np.int8)
    expected[np.arange(5), np.arange(5)] = TEST  # clip k is tested in fold k, trained on in the others
    np.testing.assert_array_equal(ann.membership, expected)
    assert len(ann.sources) == 10 and all(Path(s).is_absolute() for s in ann.sources)


def test_dfew_annotations_elsewhere_tolerates_bom_blank_lines_and_whitespace(tmp_path):
    root = make_dfew(tmp_path / "data", train1="\ufeffvideo_name,label  \n\n2,2\t\n3,3\n4,4\n5,5\n6,6\n\n")
    moved = tmp_path / "splits"
    (tmp_path / "data" / DFEW_ANN).rename(moved)
    ann = read_annotations("DFEW", root, annotations=moved)
    assert len(ann.clips) == 6
    assert ann.sources[0] == str(moved / "train(single-labeled)" / "set_1.csv")


def test_dfew_clip_absent_from_a_fold(tmp_path):
    ann = read_dfew(make_dfew(tmp_path, train2="video_name,label\n1,1\n3,3\n"))
    assert ann.membership[3, 1] == ABSENT  # clip 4 not listed in fold 2
    assert ann.membership[3, 0] == TRAIN


def test_ferv39k_labels_in_dfew_order_and_paths(tmp_path):
    ann = read_annotations("ferv39k", make_ferv(tmp_path))
    assert ann.class_names == CLASS_NAMES["dfew"]
    assert ann.split_names == ("default",)
    ids = ["Action/Angry/0003", "Action/Fear/0002", "Action/Sad/0010", "Talk/Happy/0001"]
    assert [c.id for c in ann.clips] == ids
    assert [c.label for c in ann.clips] == [3, 6, 1, 0]
    assert ann.clips[2].path == str(tmp_path / "2_ClipsforFaceCrop" / "Action" / "Sad" / "0010")
    assert ann.membership[:, 0].tolist() == [TRAIN, TEST, TRAIN, TRAIN]


def test_mafw_frames_before_clips(tmp_path):
    ann = read_annotations("mafw", make_mafw(tmp_path))
    assert ann.class_names == CLASS_NAMES["mafw"]
    assert [c.id for c in ann.clips] == ["00025", "00026", "00027"]
    assert [c.label for c in ann.clips] == [3, 7, 0]  # happiness, contempt, Anger
    assert ann.clips[0].path == str(tmp_path / "data" / "frames" / "00025")
    assert ann.clips[1].path == str(tmp_path / "data" / "clips" / "00026.mp4")
    assert ann.membership.shape == (3, 5)
    assert (ann.membership[2] == TEST).all() and (ann.membership[:2] == TRAIN).all()


def test_csv_classes_are_its_own_labels_sorted_with_synonyms_folded(tmp_path):
    """No DFEW assumption: sad/surprise/happy give three classes, not DFEW's seven."""
    file = make_csv(tmp_path, "label,path,split\nHappy,vids/b.mp4,train\nsad,vids/a.mp4,test\nsadness,/abs/c,train\n")
    ann = read_annotations("csv", tmp_path)
    assert ann.class_names == ("happiness", "sadness")
    assert [c.id for c in ann.clips] == ["/abs/c", "vids/a.mp4", "vids/b.mp4"]
    assert [c.label for c in ann.clips] == [1, 1, 0]
    assert ann.clips[0].path == "/abs/c" and ann.clips[1].path == str(tmp_path / "vids" / "a.mp4")
    assert ann.split_names == ("default",) and ann.membership[:, 0].tolist() == [TRAIN, TEST, TRAIN]
    assert ann.sources == (str(file),)
    assert ann.notes == (f"{file}:2: label 'Happy' is used by 1 clip only (a typo?); its class cannot be tested",)
    make_csv(tmp_path, "path,label,split\na,sad,train\nb,surprise,test\nc,happy,train\nd,surprised,train\n")
    assert read_csv(tmp_path).class_names == ("happiness", "sadness", "surprise")


def test_csv_classes_flag_fixes_names_and_order(tmp_path):
    file = make_csv(tmp_path, "path,label,split\na,sad,train\nb,happy,test\nc,sad,test\n")
    ann = read_annotations("csv", tmp_path, classes=("surprise", "sad", "Happy"))
    assert ann.class_names == ("surprise", "sadness", "happiness")
    assert [c.label for c in ann.clips] == [1, 2, 1]
    assert ann.notes == (
        f"{file}: class 'surprise' (from --classes) has no clip",
        f"{file}:3: label 'happy' is used by 1 clip only (a typo?); its class cannot be tested",
    )
    raises_at(
        file,
        3,
        "expected a label among surprise, sadness (--classes), found 'happy'; add it to --classes or fix the label",
        call=lambda: read_csv(tmp_path, classes=("surprise", "sad")),
    )
    with pytest.raises(ConfigError, match=r"--classes: expected distinct class names .* found \['sad', 'sadness'\]"):
        read_csv(tmp_path, classes=("sad", "sadness"))
    with pytest.raises(ConfigError, match="--classes: expected only with --dataset csv"):
        read_annotations("dfew", tmp_path, classes=("sad",))


def test_a_misspelt_label_stops_with_its_line_unless_classes_lists_it(tmp_path):
    rows = "".join(f"h{k},happiness,train\n" for k in range(3)) + "t,hapiness,test\ns1,sad,train\ns2,sad,test\n"
    file = make_csv(tmp_path, "path,label,split\n" + rows)
    raises_at(
        file,
        5,
        "expected one spelling per class, found 'hapiness' (1 clip) beside 'happiness' (3 clips), near-duplicates "
        "(similarity 0.94); fix the label, or pass --classes listing both to keep them as two classes",
        call=lambda: read_csv(tmp_path),
    )
    ann = read_csv(tmp_path, classes=("happiness", "hapiness", "sadness"))  # the user says they are two classes
    assert [c.label for c in ann.clips] == [0, 0, 0, 2, 2, 1]
    raises_at(
        file,
        5,
        "expected a label among happiness, sadness (--classes), found 'hapiness'; did you mean 'happiness'?",
        call=lambda: read_csv(tmp_path, classes=("happiness", "sadness")),
    )
    make_csv(tmp_path, "path,label,split\na,hapiness,train\nb,sad,test\nc,sad,train\n")  # a typo of a known name
    raises_at(
        file,
        2,
        "expected a label such as 'happiness', found 'hapiness', a near-duplicate of that emotion's name",
        call=lambda: read_csv(tmp_path),
    )
    make_csv(tmp_path, "path,label,split\na,cat,train\nb,dog,test\nc,cats,train\n")  # cat/cats: 0.86
    raises_at(file, 4, "found 'cats' (1 clip) beside 'cat' (1 clip)", call=lambda: read_csv(tmp_path))


def test_csv_paths_are_normalised_and_may_not_leave_the_root(tmp_path):
    file = make_csv(tmp_path, "path,label,split\n./a/x,sad,train\nb//y/,happy,test\n/abs//z,sad,test\n")
    ann = read_csv(tmp_path)
    assert [c.id for c in ann.clips] == ["/abs/z", "a/x", "b/y"]
    assert ann.clips[1].path == str(tmp_path / "a" / "x")
    make_csv(tmp_path, "path,label,split\n./a/x,sad,train\na//x/,sad,train\n")
    raises_at(file, 3, "found 'a/x' again (first at line 2)", call=lambda: read_csv(tmp_path))
    make_csv(tmp_path, "path,label,split\na,sad,train\nsub/../../../etc/x,sad,test\n")
    raises_at(
        file,
        3,
        "expected a path inside --root (or an absolute path), found 'sub/../../../etc/x', which leads out of it",
        call=lambda: read_csv(tmp_path),
    )
    make_csv(tmp_path, "path,label,split\n..,sad,train\n")
    raises_at(file, 2, "found '..', which leads out of it", call=lambda: read_csv(tmp_path))
    make_csv(tmp_path, "path,label,split\na/..,sad,train\n")
    raises_at(
        file, 2, "expected a clip's path inside --root, found 'a/..', the root itself", call=lambda: read_csv(tmp_path)
    )


def test_csv_without_split_column_gets_a_seeded_stratified_split(tmp_path):
    counts = {"happy": 10, "sad": 5, "surprise": 2, "fear": 1}
    rows = "".join(f"{name}{k:02d},{name}\n" for name, n in counts.items() for k in range(n))
    make_csv(tmp_path, "path,label\n" + rows)
    ann = read_csv(tmp_path, test_fraction=0.2, seed=0)
    labels = np.array([c.label for c in ann.clips])
    test = ann.membership[:, 0] == TEST
    names = ann.class_names
    # round(0.2 n), at least 1 of a class with >= 2 clips, never all of a class; a lone clip trains
    assert {names[c]: int(test[labels == c].sum()) for c in range(len(names))} == {
        "fear": 0,
        "happiness": 2,
        "sadness": 1,
        "surprise": 1,
    }
    assert set(ann.membership[:, 0].tolist()) == {TRAIN, TEST}
    again = read_csv(tmp_path, test_fraction=0.2, seed=0)
    assert np.array_equal(again.membership, ann.membership) and again.sha256() == ann.sha256()
    other = [read_csv(tmp_path, test_fraction=0.2, seed=s).membership for s in range(1, 6)]
    assert any(not np.array_equal(m, ann.membership) for m in other)  # the seed decides which clips
    assert (read_csv(tmp_path, test_fraction=0.0).membership == TRAIN).all()
    with pytest.raises(ConfigError, match=r"--test-fraction: expected a fraction in \[0, 1\), found 1.5"):
        read_csv(tmp_path, test_fraction=1.5)


def test_val_fraction_carves_validation_from_train_only(tmp_path):
    rows = "".join(f"{name}{k:02d},{name},{'test' if k < 2 else 'train'}\n" for name in ("a1", "b2") for k in range(12))
    make_csv(tmp_path, "path,label,split\n" + rows)
    ann = read_annotations("csv", tmp_path, val_fraction=0.25, seed=3)
    labels = np.array([c.label for c in ann.clips])
    col = ann.membership[:, 0]
    for c in (0, 1):  # 10 train clips per class: 2.5 -> 3 (rounded half up) become val; test untouched
        assert ((col == VAL) & (labels == c)).sum() == 3 and ((col == TEST) & (labels == c)).sum() == 2
    plain = read_annotations("csv", tmp_path)
    assert np.array_equal(np.where(col == VAL, TRAIN, col), plain.membership[:, 0])
    make_csv(tmp_path, "path,label,split\na,x1,val\nb,x1,train\nc,y2,test\nd,y2,train\n")
    assert read_csv(tmp_path).membership[:, 0].tolist() == [VAL, TRAIN, TEST, TRAIN]
    with pytest.raises(ConfigError, match="expected annotations without val clips, found 1 marked val"):
        read_annotations("csv", tmp_path, val_fraction=0.2)


def test_csv_with_split_and_free_labels(tmp_path):
    file = make_csv(tmp_path / "elsewhere", 'path,label,split\nb,dog,TEST\n"a,1",Cat,Train\n')
    ann = read_csv(tmp_path, file)
    assert ann.class_names == ("cat", "dog")  # sorted canonical names
    assert [(c.id, c.label) for c in ann.clips] == [("a,1", 0), ("b", 1)]
    assert ann.membership[:, 0].tolist() == [TRAIN, TEST]


def test_csv_integer_labels_sort_numerically(tmp_path):
    make_csv(tmp_path, "path,label\nx,10\ny,2\nz,02\n")
    ann = read_csv(tmp_path)
    assert ann.class_names == ("2", "10")
    assert [c.label for c in ann.clips] == [1, 0, 0]


def test_sha256_is_deterministic_and_tracks_labels(tmp_path):
    first, again = read_dfew(make_dfew(tmp_path)), read_dfew(make_dfew(tmp_path))
    assert first.sha256() == again.sha256() and len(first.sha256()) == 64
    with pytest.raises(ValueError):
        first.membership[0, 0] = ABSENT  # read-only: the digest cannot go stale
    ferv = read_ferv39k(make_ferv(tmp_path))
    assert read_ferv39k(make_ferv(tmp_path)).sha256() == ferv.sha256()
    relabelled = read_ferv39k(make_ferv(tmp_path, test="Action/Fear/0002 Sad\n"))
    assert relabelled.sha256() != ferv.sha256()


# Errors -------------------------------------------------------------------------------------------


def test_unknown_dataset_lists_valid_ones(tmp_path):
    with pytest.raises(AnnotationError, match="expected one of dfew, ferv39k, mafw, csv, found 'affwild'"):
        read_annotations("affwild", tmp_path)


def test_missing_root(tmp_path):
    missing = tmp_path / "nowhere"
    raises_at(missing, None, "expected the dataset root folder", call=lambda: read_annotations("dfew", missing))


def test_dfew_missing_split_file(tmp_path):
    root = make_dfew(tmp_path, test5=None)
    raises_at(dfew_file(root, "test5"), None, "expected an annotation file", call=lambda: read_dfew(root))


def test_dfew_unknown_label_lists_valid_ones(tmp_path):
    root = make_dfew(tmp_path, train3="video_name,label\n1,1\n2,8\n")
    raises_at(dfew_file(root, "train3"), 3, "1=happiness", "7=fear", "found '8'", call=lambda: read_dfew(root))


def test_dfew_bad_video_name(tmp_path):
    root = make_dfew(tmp_path, train3="video_name,label\nclip1,1\n")
    raises_at(dfew_file(root, "train3"), 2, "integer video_name", "found 'clip1'", call=lambda: read_dfew(root))


def test_dfew_missing_column_shows_header(tmp_path):
    root = make_dfew(tmp_path, train1="\nvideo,label\n2,2\n")
    raises_at(dfew_file(root, "train1"), 2, "video_name,label", "found 'video,label'", call=lambda: read_dfew(root))


def test_dfew_duplicate_within_file_counts_blank_lines(tmp_path):
    root = make_dfew(tmp_path, train1="video_name,label\n2,2\n\n00002,2\n")
    raises_at(dfew_file(root, "train1"), 4, "'00002' again (first at line 2)", call=lambda: read_dfew(root))


def test_dfew_conflicting_label_names_both_files(tmp_path):
    root = make_dfew(tmp_path, train2="video_name,label\n1,1\n3,4\n")
    raises_at(
        dfew_file(root, "train2"),
        3,
        f"keep label 'neutral' from {dfew_file(root, 'train1')}:3",
        "found 'anger'",
        call=lambda: read_dfew(root),
    )


def test_dfew_train_and_test_of_one_fold(tmp_path):
    root = make_dfew(tmp_path, test1="video_name,label\n1,1\n2,2\n")
    raises_at(
        dfew_file(root, "test1"),
        3,
        "only one of train and test of fold1",
        f"in test here and in train at {dfew_file(root, 'train1')}:2",
        call=lambda: read_dfew(root),
    )


def test_dfew_wrong_field_count(tmp_path):
    root = make_dfew(tmp_path, test4="video_name,label\n4,4,extra\n")
    raises_at(dfew_file(root, "test4"), 2, "expected 2 fields", "found 3", call=lambda: read_dfew(root))


def test_ferv39k_errors(tmp_path):
    file = tmp_path / FERV_ANN / "train_All.csv"
    make_ferv(tmp_path, train="Action/Sad/0010 Sad\nAction/Sad/0011 Bored\n")
    raises_at(file, 2, "happiness, sadness", "found 'Bored'", call=lambda: read_ferv39k(tmp_path))
    make_ferv(tmp_path, train="Action/Sad/0010 Sad\n\nAction/Sad/0011\n")
    raises_at(file, 3, "expected 2 fields <clip path> <label>, found 1", call=lambda: read_ferv39k(tmp_path))
    make_ferv(tmp_path, train="Action/Sad/0010 Sad\nAction/Sad/0010 Sad\n")
    raises_at(file, 2, "first at line 1", call=lambda: read_ferv39k(tmp_path))
    make_ferv(tmp_path, train="Action/Sad/0010 Sad\n", test="Action/Fear/0002 Fear\nAction/Sad/0010 Sad\n")
    raises_at(file.with_name("test_All.csv"), 2, "of default", call=lambda: read_ferv39k(tmp_path))
    (tmp_path / FERV_ANN / "test_All.csv").unlink()
    raises_at(
        file.with_name("test_All.csv"),
        None,
        "expected an annotation file",
        call=lambda: read_ferv39k(tmp_path),
    )


def test_mafw_errors(tmp_path):
    file = tmp_path / MAFW_ANN / "set_1" / "train.txt"
    make_mafw(tmp_path, train1="00025.mp4 happiness\n00026.mp4 smug\n")
    raises_at(file, 2, "contempt, anxiety", "found 'smug'", call=lambda: read_mafw(tmp_path))
    make_mafw(tmp_path, train1="00025.mp4 happiness extra\n")
    raises_at(file, 1, "expected 2 fields <clip file> <label>, found 3", call=lambda: read_mafw(tmp_path))


def test_csv_errors(tmp_path):
    file = tmp_path / "annotations.csv"
    raises_at(file, None, "expected an annotation file", call=lambda: read_csv(tmp_path))
    make_csv(tmp_path, "file,label\na,happy\n")
    raises_at(file, 1, "columns path,label", "found 'file,label'", call=lambda: read_csv(tmp_path))
    make_csv(tmp_path, "path,label,split\na,happy,train\nb,sad,dev\n")
    raises_at(file, 3, "expected split 'train', 'val' or 'test', found 'dev'", call=lambda: read_csv(tmp_path))
    make_csv(tmp_path, "path,label\na,happy\nb,\n")
    raises_at(file, 3, "expected a value in column 'label'", call=lambda: read_csv(tmp_path))
    make_csv(tmp_path, "path,label\na,happy\nb,sad,x\n")
    raises_at(file, 3, "expected 2 fields, found 3", call=lambda: read_csv(tmp_path))
    make_csv(tmp_path, "path,label\na,happy\na,happy\n")
    raises_at(file, 3, "'a' again (first at line 2)", call=lambda: read_csv(tmp_path))
    make_csv(tmp_path, "path,label\n\n")
    raises_at(file, None, "expected at least one clip row", call=lambda: read_csv(tmp_path))


def test_error_pickles_with_its_location():
    error = pickle.loads(pickle.dumps(AnnotationError("a.csv", 3, "expected x, found y")))
    assert (error.file, error.line, str(error)) == ("a.csv", 3, "a.csv:3: expected x, found y")
