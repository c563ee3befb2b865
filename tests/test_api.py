"""The top-level names of `activation_hash`: each resolves to its submodule's object, lazily."""
import importlib
import subprocess
import sys

import pytest

import activation_hash as ah


@pytest.mark.parametrize("name", sorted(ah._LAZY))
def test_top_level_name_is_the_submodule_object(name):
    module = importlib.import_module(f"activation_hash.{ah._LAZY[name]}")
    assert getattr(ah, name) is getattr(module, name)
    assert name in dir(ah) and name in ah.__all__


def test_unknown_name_raises_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'not_a_name'"):
        ah.not_a_name  # noqa: B018


def test_import_does_not_load_faiss_or_sklearn():
    code = ("import sys, activation_hash as ah; ah.CodeBook; ah.CollisionCounter; "
            "print(sorted(m for m in ('faiss', 'sklearn') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_record_is_the_function_after_its_module_is_imported():
    code = ("import activation_hash.extract, activation_hash.record, activation_hash as ah; "
            "from activation_hash.record import record; print(ah.record is record)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"
