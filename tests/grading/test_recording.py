"""Recording through nbgrader with its set-up shared: one gradebook engine per URL, each
metadata schema checked once, and nbgrader's own behaviour (what it stores, what it refuses)
unchanged."""

from __future__ import annotations

import warnings

import jsonschema
import nbgrader.api
import pytest
import sqlalchemy
from nbformat import v4
from nbgrader.api import Gradebook
from nbgrader.nbgraderformat import MetadataValidator, ValidationError, common

from bnlib.grading.cli import nbgrader_env
from bnlib.grading.recording import SchemaCheckedOnce, nbgrader_reused


def graded_cell(**metadata):
    cell = v4.new_code_cell("x = 1")
    cell.metadata.nbgrader = {"schema_version": 3, "grade": True, "solution": False,
                              "locked": True, "grade_id": "test_x", "points": 1.0, **metadata}
    return cell


def test_gradebooks_opened_while_reused_share_one_engine_and_keep_what_they_write(
        tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", nbgrader_env()["PATH"])  # nbgrader runs alembic from PATH
    url = f"sqlite:///{tmp_path / 'gradebook.db'}"
    with nbgrader_reused():
        with Gradebook(url) as first:
            first.add_student("ada")
            engine = first.engine
        with Gradebook(url) as second:
            assert second.engine is engine
            assert [s.id for s in second.students] == ["ada"]
        with Gradebook(f"sqlite:///{tmp_path / 'other.db'}") as other:
            assert other.engine is not engine
    assert nbgrader.api.create_engine is sqlalchemy.create_engine
    assert common.jsonschema is jsonschema
    with Gradebook(url) as after:
        assert after.engine is not engine
        assert [s.id for s in after.students] == ["ada"]


def test_metadata_is_validated_as_jsonschema_does():
    validator = MetadataValidator()
    bad = graded_cell(points="many")
    with pytest.raises(ValidationError) as expected:
        validator.validate_cell(bad)
    with nbgrader_reused():
        validator.validate_cell(graded_cell())  # a valid cell passes
        with pytest.raises(ValidationError) as got:
            validator.validate_cell(bad)
    assert str(got.value) == str(expected.value)
    assert "'many' is not of type 'number'" in str(got.value)


def test_each_schema_is_checked_once(monkeypatch):
    checked = []
    check_schema = jsonschema.Draft202012Validator.check_schema
    monkeypatch.setattr(jsonschema.Draft202012Validator, "check_schema",
                        classmethod(lambda cls, s: checked.append(s) or check_schema(s)))
    once = SchemaCheckedOnce()
    schema = {"type": "object", "properties": {"points": {"type": "number"}}}
    for points in (1, 2.5, 3):
        once.validate({"points": points}, dict(schema))
    with pytest.raises(jsonschema.ValidationError, match="'x' is not of type 'number'"):
        once.validate({"points": "x"}, dict(schema))
    assert checked == [schema]
    with pytest.raises(jsonschema.SchemaError):
        once.validate({}, {"type": "no such type"})


def test_add_submission_is_quiet_and_keeps_every_notebook(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", nbgrader_env()["PATH"])

    def submit(url, student):
        with Gradebook(url) as gradebook:
            gradebook.add_student(student)
            gradebook.add_submission("ps1", student)

    url = f"sqlite:///{tmp_path / 'gradebook.db'}"
    with Gradebook(url) as gradebook:
        gradebook.add_assignment("ps1")
        gradebook.add_notebook("problem", "ps1")
        gradebook.add_grade_cell("test_x", "problem", "ps1", max_score=1.0, cell_type="code")
    with pytest.warns(sqlalchemy.exc.SAWarning, match="not in session"):
        submit(url, "ada")  # nbgrader under SQLAlchemy 2, left to itself
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any other warning still fails the test
        with nbgrader_reused():
            submit(url, "bob")
    with Gradebook(url) as gradebook:
        for student in ("ada", "bob"):
            notebook = gradebook.find_submission_notebook("problem", "ps1", student)
            assert [grade.name for grade in notebook.grades] == ["test_x"]
