"""The generic spec registry behind the image model and text encoder registries."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from similar_images import embed
from similar_images._util.registry import Registry


@dataclass(frozen=True)
class _Spec:
    name: str
    dim: int


def test_register_get_and_list() -> None:
    reg: Registry[_Spec] = Registry("widget")
    reg.register(_Spec("b", 2))
    reg.register(_Spec("a", 1))
    assert reg.names() == ["a", "b"] and len(reg) == 2 and "a" in reg and "c" not in reg
    assert reg.get("b") == _Spec("b", 2)


def test_duplicates_need_replace() -> None:
    reg: Registry[_Spec] = Registry("widget")
    reg.register(_Spec("a", 1))
    with pytest.raises(ValueError, match="A widget named 'a' is already registered; pass replace=True"):
        reg.register(_Spec("a", 2))
    assert reg.get("a").dim == 1
    reg.register(_Spec("a", 2), replace=True)
    assert reg.get("a").dim == 2


def test_unknown_names_list_the_choices_and_the_hint() -> None:
    reg: Registry[_Spec] = Registry("widget", hint="or register one")
    reg.register(_Spec("a", 1))
    reg.register(_Spec("b", 2))
    with pytest.raises(ValueError, match=r"^Unknown widget 'c'; choose one of: a, b \(or register one\)$"):
        reg.get("c")
    with pytest.raises(ValueError, match=r"^Unknown widget 'c'; choose one of: $"):
        Registry("widget").get("c")


def test_the_public_registries_keep_their_messages() -> None:
    with pytest.raises(ValueError, match=r"^Unknown model 'nope'; choose one of: .*vgg16-avg"):
        embed.get_model_spec("nope")
    with pytest.raises(ValueError, match=r"A model named 'vgg16-avg' is already registered"):
        embed.register_model(embed.get_model_spec("vgg16-avg"))
    with pytest.raises(ValueError, match=r"register your own with similar_images.embed.register_text_encoder\)$"):
        embed.get_text_encoder("nope")
    with pytest.raises(ValueError, match=r"A text encoder named 'all-MiniLM-L6-v2' is already registered"):
        embed.register_text_encoder(embed.get_text_encoder(embed.DEFAULT_TEXT_ENCODER))
