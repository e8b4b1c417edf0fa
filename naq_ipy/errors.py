"""The one exception family of naq_ipy: every error the library raises on purpose."""


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
    """A job failed on a worker; carries the remote error text and traceback."""

    def __init__(self, message: str, *, job_id: str | None = None, traceback: str | None = None) -> None:
        super().__init__(message)
        self.job_id = job_id
        self.remote_traceback = traceback

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
