"""The names of the folders and files a study writes that more than one module reads.

Kept apart so the plan, the merge stage and the prune stage (study/keep.py) share them without
importing each other.
"""

POINT_EVALS = "eval-points"  # RUN/eval-points/step-N: the evaluation of RUN/points/step-N
MERGE_DIR = "merges"  # STUDY/merges/<arm>-<hash>: one merge of an arm's seeds
MERGE_MODEL = "model"  # the merged checkpoint in its folder
MERGE_RECORD = "merge-job.json"  # the merge job's record in its folder
