import pytest

from lightning_fusion.data.readers import READERS
from lightning_fusion.encoders import ENCODERS
from lightning_fusion.errors import UnknownNameError
from lightning_fusion.fusion import FUSIONS
from lightning_fusion.registry import Registry


def test_register_get_create_and_metadata():
    things = Registry("thing")

    @things.register("square", sides=4)
    class Square:
        def __init__(self, size):
            self.size = size

    assert things.get("square") is Square
    assert things.create("square", 3).size == 3
    assert things.metadata("square") == {"sides": 4}
    assert "square" in things and len(things) == 1 and list(things) == ["square"]


def test_unknown_name_suggests_closest():
    things = Registry("thing")
    for name in ("concat", "gated", "attention"):
        things.register(name)(object)
    with pytest.raises(
        UnknownNameError, match=r"unknown thing 'conact'; did you mean 'concat'\?.*Choices: attention, concat, gated"
    ):
        things.get("conact")
    with pytest.raises(UnknownNameError, match=r"unknown thing 'zzz'\. Choices"):
        things.get("zzz")


def test_duplicate_registration_is_an_error():
    things = Registry("thing")
    things.register("a")(int)
    with pytest.raises(ValueError, match="already registered"):
        things.register("a")(float)


def test_names_filter_by_pattern_and_metadata():
    assert ENCODERS.names(input_kind="image") == ["timm"]
    assert ENCODERS.names(input_kind="vector") == ["mlp"]
    assert "concat" in FUSIONS.names("con*")


@pytest.mark.parametrize("registry", [ENCODERS, FUSIONS, READERS], ids=lambda r: r.what)
def test_builtin_entries_declare_their_metadata(registry):
    assert len(registry) > 0
    for name in registry:
        meta = registry.metadata(name)
        assert "config" in meta, f"{registry.what} {name!r} must declare its options dataclass (or None)"
        if registry is ENCODERS:
            assert meta["input_kind"] in ("image", "vector", "signal")
        if registry is FUSIONS:
            assert meta["level"] in ("input", "intermediate", "decision")
            assert meta["min_modalities"] >= 1
