"""`evaluate` module: the speech-enhancement metrics of `hybrid_mpsenet.metrics` for lists of waveforms.

import evaluate
from hybrid_mpsenet.metrics import EVALUATE_MODULE

metric = evaluate.load(EVALUATE_MODULE)  # a local path: nothing is downloaded
metric.compute(predictions=[enhanced, ...], references=[clean, ...], sampling_rate=16000, num_workers=2)
"""

import datasets
import evaluate
import numpy as np

from hybrid_mpsenet.metrics import pair_scores, parallel_map, summarise

_DESCRIPTION = """PESQ (wide and narrow band), STOI, extended STOI, the composite measures CSIG/CBAK/COVL (Hu &
Loizou, 2008), segmental SNR and SI-SDR between enhanced and clean speech, averaged over the pairs. A measure that
fails on a pair (PESQ on silence) is left out of its mean and counted in `failed_<name>`."""

_KWARGS = """
Args:
    predictions: enhanced waveforms, each a list or array of samples.
    references: the clean waveforms, in the same order.
    sampling_rate: 16000 (8000 gives narrow-band PESQ only).
    num_workers: processes computing the pairs (0: in-process).
Returns:
    pesq, pesq_nb, stoi, estoi, csig, cbak, covl, ssnr, si_sdr (means), failed_<name> (counts), num_pairs.
"""

_CITATION = """@article{hu2008evaluation,
  title={Evaluation of objective quality measures for speech enhancement},
  author={Hu, Yi and Loizou, Philipos C.}, journal={IEEE TASLP}, volume={16}, number={1}, pages={229--238},
  year={2008}
}"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class SpeechEnhancementMetrics(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("float32")),
                    "references": datasets.Sequence(datasets.Value("float32")),
                }
            ),
        )

    def _compute(self, predictions, references, sampling_rate=16000, num_workers=0):
        if len(predictions) != len(references):
            raise ValueError(f"Got {len(predictions)} predictions for {len(references)} references.")
        pairs = [
            (np.asarray(r, np.float64), np.asarray(p, np.float64)) for p, r in zip(predictions, references, strict=True)
        ]
        rows = parallel_map(pair_scores, pairs, sampling_rate, num_workers)
        result = {"num_pairs": len(rows)}
        for name, summary in (summarise(rows) if rows else {}).items():
            result[name] = summary["mean"]
            result[f"failed_{name}"] = summary["failed"]
        return result
