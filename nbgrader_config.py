"""nbgrader configuration: maps nbgrader's steps onto this repository.

    solutions/<assignment>/<assignment>.ipynb   source (solutions, visible and hidden tests)
    exercises/<assignment>/<assignment>.ipynb   release (generated, committed)
    grading/                                    submitted, autograded, feedback, gradebook.db
                                                (git-ignored; never committed)

Every path is computed from this file's location, so the commands work from any directory
and a copy of this file in another folder makes that folder a course of its own.
"""

import os

from nbconvert.preprocessors import CSSHTMLHeaderPreprocessor, Preprocessor
from nbgrader.preprocessors import ClearHiddenTests, GetGrades
from traitlets import Bool

c = get_config()  # noqa: F821  (provided by traitlets when nbgrader loads this file)

COURSE_ROOT = os.path.dirname(os.path.abspath(__file__))
GRADING_ROOT = os.path.join(COURSE_ROOT, "grading")

c.CourseDirectory.root = COURSE_ROOT
c.CourseDirectory.course_id = "batchnorm"
c.CourseDirectory.source_directory = "solutions"
c.CourseDirectory.release_directory = "exercises"
c.CourseDirectory.submitted_directory = os.path.join("grading", "submitted")
c.CourseDirectory.autograded_directory = os.path.join("grading", "autograded")
c.CourseDirectory.feedback_directory = os.path.join("grading", "feedback")
c.CourseDirectory.solution_directory = os.path.join("grading", "release_solution")
c.CourseDirectory.source_with_tests_directory = os.path.join("grading", "source_with_tests")
c.CourseDirectory.db_url = "sqlite:///" + os.path.join(GRADING_ROOT, "gradebook.db")
# Files nbgrader never copies into a release or a submission.
c.CourseDirectory.ignore = [".ipynb_checkpoints", "*.pyc", "__pycache__", "feedback", ".*"]
os.makedirs(GRADING_ROOT, exist_ok=True)

# A release carries no solution, no hidden test and no output.
c.ClearSolutions.code_stub = {"python": "# YOUR CODE HERE\nraise NotImplementedError()"}
c.ClearSolutions.text_stub = "YOUR ANSWER HERE"

# Graded code runs with a bounded time per cell.
c.Execute.timeout = 120
c.Execute.allow_errors = True


class HideTestTracebacks(Preprocessor):
    """Replace the traceback of a failed test cell by its one-line message.

    A traceback quotes the line that failed, and in a test cell that line may be a hidden test;
    the message (written by bnlib.grading) is what the student needs.
    """

    enabled = Bool(True)  # nbconvert preprocessors are off unless enabled

    def preprocess_cell(self, cell, resources, index):
        is_test_cell = cell.metadata.get("nbgrader", {}).get("grade", False) and not (
            cell.metadata.get("nbgrader", {}).get("solution", False)
        )
        if cell.cell_type == "code" and is_test_cell:
            for output in cell.get("outputs", []):
                if output.get("output_type") == "error":
                    output["traceback"] = [f"{output['ename']}: {output['evalue']}"]
        return cell, resources


# Feedback is built from the autograded notebook, which holds the hidden tests again:
# strip them, and the tracebacks that would quote them, before rendering.
c.GenerateFeedback.preprocessors = [
    GetGrades,
    ClearHiddenTests,
    HideTestTracebacks,
    CSSHTMLHeaderPreprocessor,
]

# --- hardened autograding ---
# Scores come from trusted code in this process; student code runs in a limited sandbox
# (bnlib/grading/sandbox.py). See README "Grading: what is isolated".
from bnlib.grading.pipeline import configure_autograde  # noqa: E402

configure_autograde(c)
