"""The one exception family of naq_ipy: every error the library raises on purpose."""

from collections.abc import Callable


class NaqException(Exception):
    """Base class of every naq_ipy error."""


class NaqConnectionError(NaqException):
    """The NATS server could not be reached or the connection failed."""


class ConfigurationError(NaqException):
    """A setting or an argument is invalid (bad cron, interval, zone, queue name, ...)."""


class JobNotFoundError(NaqException):
    """No job or scheduled job exists under the given id or name."""


class SerializationError(NaqException):
    """A job, an argument or a result cannot be pickled or unpickled."""


class SignatureError(NaqException):
    """A record or job is not signed by a key this process holds: refused before anything of it is unpickled."""


class JobExecutionError(NaqException):
    """A job failed on a worker; carries the remote error text and traceback.

    In IPython it shows as the remote traceback alone (the `_render_traceback_` hook, as
    ipyparallel's RemoteError), never the kernel's own frames that waited for the job, unless
    `show_local_frames()` says so (the IPython extension makes that true under `%xmode Verbose`).
    """

    show_local_frames: Callable[[], bool] = staticmethod(lambda: False)  # type: ignore[assignment]

    def __init__(self, message: str, *, job_id: str | None = None, traceback: str | None = None) -> None:
        super().__init__(message)
        self.job_id = job_id
        self.remote_traceback = traceback

    @property
    def _render_traceback_(self) -> Callable[[], list[str]]:
        # a property raising AttributeError makes IPython's hasattr() false: its own full traceback then
        if not self.remote_traceback or type(self).show_local_frames():
            raise AttributeError("_render_traceback_")
        return self.render_remote

    def render_remote(self) -> list[str]:
        """The lines IPython shows for this error: which job failed, then its remote traceback."""
        where = f"job {self.job_id}" if self.job_id else "a job"
        return [f"{where} failed on a worker:", *(self.remote_traceback or "").rstrip().splitlines()]

    def __str__(self) -> str:
        text = super().__str__()
        if self.remote_traceback:
            return f"{text}\n\nRemote traceback:\n{self.remote_traceback.rstrip()}"
        return text


class ConflictError(NaqException):
    """A revision-checked update kept losing to concurrent changes and gave up."""


class PermissionDeniedError(NaqException):
    """The NATS server refused an operation for lack of permission."""


class RefusedError(NaqException):
    """NATS refused to store jobs (a full stream, a limit an operator set); `refused` holds what was not stored."""

    def __init__(self, message: str, refused: list[object] | None = None) -> None:
        super().__init__(message)
        self.refused = refused or []
