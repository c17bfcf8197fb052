"""Prior stage: train the text-to-goal CVAE -> ``Layout.prior``, ``Layout.prior_metrics`` (headline: val loss),
``Layout.prior_report`` (the full record) and ``Layout.prior_history`` (losses per epoch, a DVC plot).

With no ``prior.data``/``annotations``/``annotations_file`` the embedded episodes are paired with
toy prompts and the metrics say ``"toy": true``.
"""

from __future__ import annotations

from typing import Optional, Sequence

from stages._common import run_stage
from steve1.eval.prompt import mineclip_text_encoder
from steve1.layout import Layout
from steve1.params import Params
from steve1.train.prior import fit_prior


def _body(params: Params) -> None:
    e = params.embed
    device = "cpu" if e.device == "auto" else e.device
    layout = Layout.from_params(params)
    metrics = fit_prior(params.prior, layout.embeds, layout.prior, layout.prior_metrics,
                        lambda: mineclip_text_encoder(e.weights, e.preset, e.seed, device),
                        report_path=layout.prior_report, history_path=layout.prior_history)
    official = metrics["official"]
    print(f"prior: {metrics['n_pairs']} pairs, best val loss {metrics['best_val_loss']:.4f} at epoch "
          f"{metrics['best_epoch']}{' (TOY prior)' if metrics['toy'] else ''}"
          + (f"; {official['path']}: val loss {official['val_loss']:.4f}" if official else ""))


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_stage("prior", _body, argv)


if __name__ == "__main__":
    raise SystemExit(main())
