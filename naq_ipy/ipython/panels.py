"""The widget panels: `ScheduledJobsPanel` and `QueueMonitor` (their base class is in `panel_base`).

ipywidgets is imported only when a panel builds its widget, so importing this module (and
showing the static HTML table in nbconvert or a terminal) works without it.
"""

from naq_ipy.ipython.monitor_panel import QueueMonitor
from naq_ipy.ipython.panel_base import Panel, in_kernel
from naq_ipy.ipython.schedules_panel import ScheduledJobsPanel

__all__ = ["Panel", "QueueMonitor", "ScheduledJobsPanel", "in_kernel"]
