"""The curated public API: exactly ``__all__``, every name importable."""

import subprocess
import sys

import fedloom

EXPECTED = {
    "ArrayDataset",
    "ClientMetrics",
    "FederatedData",
    "Loss",
    "Metric",
    "RunSummary",
    "Task",
    "load_model",
    "simulate",
    "CheckpointError",
    "ClientPartition",
    "ConfigError",
    "ConvergenceMonitor",
    "DataError",
    "DeploymentClient",
    "DeploymentServer",
    "Dispatch",
    "Exclusion",
    "FedloomError",
    "FlatModule",
    "ParamLayout",
    "RejectionKind",
    "RoundReport",
    "RoundResult",
    "RunConfig",
    "RunDirectory",
    "ServerOptions",
    "Simulation",
    "SyncServer",
    "TorchTrainer",
    "TrainPlan",
    "Update",
    "UpdateRejected",
    "load_config",
    "make_server_optimizer",
    "partition",
    "weighted_mean",
    "start_simulation",
    "resume_simulation",
    "open_deployment",
    "deployment_server",
    "RoundEngine",
}


def test_all_is_curated():
    assert set(fedloom.__all__) == EXPECTED


def test_every_public_name_resolves():
    for name in fedloom.__all__:
        assert getattr(fedloom, name) is not None
    try:
        fedloom.not_a_name  # noqa: B018
    except AttributeError as err:
        assert "not_a_name" in str(err)
    else:
        raise AssertionError("unknown attribute did not raise")


def test_import_is_light():
    code = (
        "import sys, fedloom, fedloom.cli; print('torch' in sys.modules, 'sklearn' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False False"
