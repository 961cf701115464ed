from tinyprune.prune.protocol import Criterion, Step, register

_SUMMARY_KEYS = ("terc_removed", "forced", "collapsed", "passes", "sparsity", "samples", "margin_k", "reference",
                 "seconds")


def summary(report: dict) -> dict:
    layers = {name: {"kept": e["n_kept"], "total": e["total"], "terc_removed": len(e["terc_removed"]),
                     "forced": len(e["forced"]), "collapse": e["collapse"],
                     # I(layer; next layer) of the full layer and the TERC margin, nats
                     "mi_full": e.get("mi_full"), "margin": e.get("margin")}
              for name, e in report["layers"].items()}
    return {**{k: report[k] for k in _SUMMARY_KEYS}, "layers": layers}


@register
class Mipp(Criterion):
    name = "mipp"
    description = ("MIPP (Westphal, Hailes & Musolesi): keep the nodes that preserve I(layer; next layer), TERC from "
                   "the output back; mi channels after it if MACs remain")
    global_ranking = True
    # MI between adjacent layers needs no labels; the mi ranking after it uses the task's
    # information labels (tinyprune.task.information_labels) where there are no classes
    tasks = ("classify", "regress", "reconstruct")

    def prepare(self, model, ctx):
        if ctx.sparsity == 0:
            return None
        from tinyprune.prune.mipp import mipp_pre_step

        pruned, report = mipp_pre_step(model, ctx.x, ctx.y, macs_sparsity=ctx.sparsity, seed=ctx.seed)
        return Step(pruned, report["kept"], {"mipp": summary(report)})

    def importance(self, model, ctx, step):
        from tinyprune.prune.mi import MIImportance

        return MIImportance(model, ctx.x, ctx.info_labels)
