"""End-to-end privacy audit of a model: the `jaxleak audit` main job.

It composes the library (training, DP training, gradient inversion, I²F,
membership inference, DP canary audits, unlearning) into one resumable run
and one self-contained HTML report; it adds no attack of its own::

  from jaxleak import privacy_audit

  config = privacy_audit.AuditConfig.quick()
  results = privacy_audit.run_audit(config, "runs/audit")
"""

from jaxleak.privacy_audit.pipeline import AuditConfig
from jaxleak.privacy_audit.pipeline import run_audit
from jaxleak.privacy_audit.pipeline import STAGES

__all__ = ("AuditConfig", "run_audit", "STAGES")
