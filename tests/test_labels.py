import pytest

from spinebench.datamodules import labels
from spinebench.datamodules.errors import UnknownLabelError


def test_default_label_set_is_c1_to_s2():
    ls = labels.get_label_set("default")
    assert len(ls) == 26
    assert ls.names[0] == "C1" and ls.names[7] == "T1" and ls.names[19] == "L1" and ls.names[-1] == "S2"
    assert ls.regions.count("cervical") == 7 and ls.regions.count("thoracic") == 12
    assert ls.regions.count("lumbar") == 5 and ls.regions.count("sacral") == 2


def test_transitional_set_places_t13_and_l6_anatomically():
    ls = labels.get_label_set("transitional")
    assert len(ls) == 28
    assert ls.index("T13") == ls.index("T12") + 1 and ls.index("L1") == ls.index("T13") + 1
    assert ls.index("L6") == ls.index("L5") + 1 and ls.index("S1") == ls.index("L6") + 1
    assert labels.region_of("T13") == "thoracic" and labels.region_of("L6") == "lumbar"


@pytest.mark.parametrize(
    "name,verse", [("C1", 1), ("C7", 7), ("T1", 8), ("T12", 19), ("L1", 20), ("L5", 24), ("L6", 25), ("S1", 26), ("T13", 28)]
)
def test_verse_ids_round_trip(name, verse):
    assert labels.verse_id(name) == verse
    assert labels.name_from_verse_id(verse) == name


def test_lml_ids_are_ten_times_the_index():
    assert labels.lml_id("C1") == 10 and labels.lml_id("T1") == 80 and labels.lml_id("S2") == 260
    assert labels.name_from_lml_id(200) == "L1"
    with pytest.raises(UnknownLabelError, match="no CSI-2014"):
        labels.lml_id("T13")


def test_unknown_labels_list_the_valid_ones():
    with pytest.raises(UnknownLabelError, match="valid labels: C1, C2"):
        labels.check_name("X9")
    with pytest.raises(UnknownLabelError, match="valid ids"):
        labels.name_from_verse_id(27)
    with pytest.raises(UnknownLabelError, match="valid label sets: default, transitional"):
        labels.get_label_set("everything")
    with pytest.raises(UnknownLabelError, match="anatomical order"):
        labels.LabelSet(("L1", "T12"))
