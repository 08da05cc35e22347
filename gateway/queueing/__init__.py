"""Fair share of a saturated pool: capacity from the workers, a bounded fair queue per tenant, and the gate that
hands out slots (see gate.py)."""

from sparsegate.gateway.queueing.gate import FairGate, PoolGate, Ticket
from sparsegate.gateway.queueing.metrics import QueueMetrics
from sparsegate.gateway.queueing.scheduler import FairScheduler, QueueFullError, Waiter

__all__ = ["FairGate", "FairScheduler", "PoolGate", "QueueFullError", "QueueMetrics", "Ticket", "Waiter"]
