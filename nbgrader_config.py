"""nbgrader configuration: maps nbgrader's steps onto this repository.

    solutions/<assignment>/<assignment>.ipynb   source (solutions, visible and hidden tests)
    exercises/<assignment>/<assignment>.ipynb   release (generated, committed)
    grading/                                    submitted, autograded, feedback, gradebook.db,
                                                downloaded (zip_collect), grades.csv (export)
                                                (git-ignored; never committed)

nbgrader reads this file from the folder it is run in, so run its commands from the folder
that holds this file. Every path is computed from this file's location: a copy of it in
another folder makes that folder a course of its own.
"""

import os

from nbconvert.preprocessors import CSSHTMLHeaderPreprocessor
from nbgrader.converters import GenerateAssignment
from nbgrader.preprocessors import GetGrades

from bnlib.grading.links import AbsoluteChapterLinks
from bnlib.grading.pipeline import HideTestTracebacks, SanitizeStudentHTML, StripHiddenTests

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

# A release links its chapters on the published book (html.baseurl in _config.yml), so the
# links work in a downloaded notebook and on Colab; then nbgrader's own steps.
c.GenerateAssignment.preprocessors = [AbsoluteChapterLinks, *GenerateAssignment().preprocessors]

# A release carries no solution, no hidden test and no output.
c.ClearSolutions.code_stub = {"python": "# YOUR CODE HERE\nraise NotImplementedError()"}
c.ClearSolutions.text_stub = "YOUR ANSWER HERE"

# Stock nbgrader's execution (replaced below by hardened grading) stops a cell after 120 s.
c.Execute.timeout = 120

# `nbgrader zip_collect <assignment>` collects what a learning management system exports:
# zip files or notebooks in grading/downloaded/<assignment>/archive/, each notebook named
# <student id>_<notebook>.ipynb (the student id holds no underscore), e.g. alice_bn_forward.ipynb.
c.ZipCollectApp.downloaded_directory = os.path.join("grading", "downloaded")  # from the root
c.FileNameCollectorPlugin.named_regexp = (
    r".*/(?P<student_id>[^/_]+)_(?P<file_id>[^/]+\.ipynb)$")

# `nbgrader export` writes grades.csv next to the gradebook, never into the repository.
c.ExportPlugin.to = os.path.join(GRADING_ROOT, "grades.csv")

# Feedback is built from the autograded notebook, which holds the hidden tests again:
# strip them, and the tracebacks that would quote them, before rendering. A student's HTML
# (a <script> or an onerror= in a written answer) is escaped, in feedback and in formgrader.
c.GenerateFeedback.preprocessors = [
    GetGrades,
    StripHiddenTests,
    HideTestTracebacks,
    SanitizeStudentHTML,
    CSSHTMLHeaderPreprocessor,
]
c.HTMLExporter.sanitize_html = True

# --- hardened autograding ---
# Scores come from trusted code in this process; student code runs in a limited sandbox
# (bnlib/grading/sandbox.py). See README "What is isolated, and what is not".
from bnlib.grading.pipeline import configure_autograde  # noqa: E402

configure_autograde(c)
