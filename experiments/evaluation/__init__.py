"""Official DCASE 2017 Task 4 evaluation: file formats, audio-tagging and event-detection metrics.

- :mod:`.formats`: prediction and ground-truth files (read, write, recognise).
- :mod:`.tagging`: audio tagging (subtask A), micro P/R/F1 as the official scorer counts them;
  beyond them, per-class AUC, EER and AP (macro mean: the mAP).
- :mod:`.detection`: sound event detection (subtask B), segment-based ER/F1 with sed_eval;
  beyond them, event-based ER/F1 with DCASE's collars.
- :mod:`.psds`: beyond the official metrics, PSDS (sed_scores_eval) of CVSSP's post-processed
  frame probabilities, DCASE 2021 scenarios 1 and 2.
- :mod:`.files`: scoring files end to end (``devinet evaluate``).

CVSSP's post-processing (the tagging rule, smoothing, frames to events) is the model
package's: :mod:`devinet.postprocessing`. The names below are this package's interface.
"""

from devinet.postprocessing import activity_runs, at_decisions
from devinet.recipe import DEFAULT_N_SALT, DEFAULT_N_SMOOTH, DEFAULT_THRESHOLD, FRAME_STEP_SEC

from .detection import (EVENT_PERCENTAGE_OF_LENGTH, EVENT_T_COLLAR, SEGMENT_SEC, evaluate_sed, evaluate_sed_events,
                        frames_to_events)
from .files import evaluate_at_file, evaluate_sed_file, tags_from_file
from .formats import (AT_PROBABILITIES, SED_PROBABILITIES, SUBMISSION, detect_prediction_format,
                      read_at_probabilities, read_at_submission, read_at_truth, read_sed_probabilities,
                      read_sed_submission, read_sed_truth, write_at_probabilities, write_at_submission,
                      write_sed_probabilities, write_sed_submission)
from .psds import PSDS_SCENARIOS, PSDSScenario, evaluate_psds, postprocessed_scores
from .tagging import (ORACLE_THRESHOLD_GRID, at_micro_f1, count_tag_pairs, decisions_to_tags, equal_error_rate,
                      evaluate_at, evaluate_at_tags, ranking_metrics, score_tags, tune_thresholds)

__all__ = [
    "FRAME_STEP_SEC", "DEFAULT_THRESHOLD", "DEFAULT_N_SMOOTH", "DEFAULT_N_SALT", "SEGMENT_SEC",
    "AT_PROBABILITIES", "SED_PROBABILITIES", "SUBMISSION",
    "detect_prediction_format", "read_at_probabilities", "write_at_probabilities",
    "read_sed_probabilities", "write_sed_probabilities", "read_at_submission", "write_at_submission",
    "read_sed_submission", "write_sed_submission", "read_at_truth", "read_sed_truth",
    "at_decisions", "at_micro_f1", "decisions_to_tags", "count_tag_pairs", "score_tags", "equal_error_rate",
    "ranking_metrics", "tune_thresholds", "evaluate_at", "evaluate_at_tags",
    "activity_runs", "frames_to_events", "evaluate_sed", "evaluate_sed_events", "EVENT_T_COLLAR",
    "EVENT_PERCENTAGE_OF_LENGTH", "PSDSScenario", "PSDS_SCENARIOS", "postprocessed_scores", "evaluate_psds",
    "tags_from_file", "evaluate_at_file", "evaluate_sed_file", "ORACLE_THRESHOLD_GRID",
]
