"""Method registry: a method is one file implementing the hooks of methods/base.py plus one line here."""

from __future__ import annotations

from drl_tune.methods.agm import AGM
from drl_tune.methods.amco import AMCo
from drl_tune.methods.arl import ARL
from drl_tune.methods.base import Batch, EpochContext, Method, NoParams
from drl_tune.methods.cml import CML
from drl_tune.methods.drl import DRL
from drl_tune.methods.gblending import GBlending
from drl_tune.methods.greedy import Greedy
from drl_tune.methods.inforeg import InfoReg
from drl_tune.methods.joint import Joint
from drl_tune.methods.lfm import LFM
from drl_tune.methods.mbsd import MBSD
from drl_tune.methods.mla import MLA
from drl_tune.methods.mmcosine import MMCosine
from drl_tune.methods.mmpareto import MMPareto
from drl_tune.methods.ogm_ge import OGMGE
from drl_tune.methods.opm import OPM
from drl_tune.methods.pmr import PMR
from drl_tune.methods.reconboost import ReconBoost
from drl_tune.methods.remix import Remix
from drl_tune.methods.umt import UMT
from drl_tune.methods.valuation import Valuation

REGISTRY: dict[str, type[Method]] = {
    Joint.name: Joint,
    DRL.name: DRL,
    OGMGE.name: OGMGE,
    OPM.name: OPM,
    MMPareto.name: MMPareto,
    InfoReg.name: InfoReg,
    Valuation.name: Valuation,
    MMCosine.name: MMCosine,
    CML.name: CML,
    PMR.name: PMR,
    AGM.name: AGM,
    MLA.name: MLA,
    ReconBoost.name: ReconBoost,
    UMT.name: UMT,
    GBlending.name: GBlending,
    Remix.name: Remix,
    LFM.name: LFM,
    Greedy.name: Greedy,
    AMCo.name: AMCo,
    MBSD.name: MBSD,
    ARL.name: ARL,
}

__all__ = ["REGISTRY", "Batch", "EpochContext", "Method", "NoParams"]
