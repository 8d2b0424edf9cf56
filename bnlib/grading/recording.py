"""Recording many submissions through nbgrader in one coordinator process, without paying
nbgrader's set-up again for each.

nbgrader's autograde opens the gradebook (``nbgrader.api.Gradebook``) about a dozen times per
submission, and each opening creates a SQLAlchemy engine: a new engine starts with an empty
cache of compiled SQL, so every query is compiled again. nbgrader also checks each cell's
metadata with ``jsonschema.validate``, which first checks the schema itself against the
JSON Schema meta-schema, on every call. Together that was most of the coordinator's time per
submission. ``nbgrader_reused()`` keeps, while it is open:

- one engine per gradebook URL, with its cache of compiled SQL (nbgrader still closes the
  engine's connections each time it closes a gradebook; sessions, transactions and what is
  written are nbgrader's, unchanged);
- each metadata schema checked once, every cell still validated against it in full;
- quiet about SQLAlchemy's warning that nbgrader's ``add_submission`` builds objects
  before they are in a session: it adds the submission (and with it those objects) right
  after, so nothing is lost.
"""

from __future__ import annotations

import contextlib
import functools
import json
import warnings


class SchemaCheckedOnce:
    """Stands in for the ``jsonschema`` module in nbgrader's metadata validator: ``validate``
    does what ``jsonschema.validate`` does, with one validator per schema, whose schema was
    checked when it was made."""

    def __init__(self):
        self.validators = {}

    def validate(self, instance, schema) -> None:
        from jsonschema import exceptions, validators

        key = json.dumps(schema, sort_keys=True)
        if key not in self.validators:
            cls = validators.validator_for(schema)
            cls.check_schema(schema)
            self.validators[key] = cls(schema)
        error = exceptions.best_match(self.validators[key].iter_errors(instance))
        if error is not None:
            raise error


@contextlib.contextmanager
def nbgrader_reused():
    """While open, nbgrader in this process shares gradebook engines and checked schemas."""
    import nbgrader.api
    from nbgrader.nbgraderformat import common
    from sqlalchemy import create_engine
    from sqlalchemy.exc import SAWarning

    saved = nbgrader.api.create_engine, common.jsonschema
    shared_engines = functools.cache(create_engine)  # nbgrader passes a URL and two flags
    nbgrader.api.create_engine, common.jsonschema = shared_engines, SchemaCheckedOnce()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", r"Object of type <\w+> not in session", SAWarning)
            yield
    finally:
        nbgrader.api.create_engine, common.jsonschema = saved
