"""The method table: every training method by name (see :class:`kdlens.distill.Method`)."""

from __future__ import annotations

from kdlens.distill._methods import SFT, FeatureKD, Method, WordKD
from kdlens.distill.blackbox import BlackBoxKD
from kdlens.distill.distillm import DistiLLM
from kdlens.distill.gkd import GKD
from kdlens.distill.metadistil import MetaDistil
from kdlens.distill.minillm import MiniLLM
from kdlens.distill.mpdistil import MPDistil
from kdlens.distill.seq_kd import SeqKD

__all__ = ["METHODS"]

#: method name -> method object (see :class:`kdlens.distill.Method`)
METHODS: dict[str, Method] = {m.name: m for m in (SFT(), WordKD(), FeatureKD(), SeqKD(), GKD(), DistiLLM(), MiniLLM(),
                                                  BlackBoxKD(), MetaDistil(), MPDistil())}
