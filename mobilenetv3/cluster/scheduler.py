"""The MindSpore cluster scheduler that rank 0 starts under mpirun on CPU (see mpi_bridge.py).

Run by file path, not as part of the package, so it imports only MindSpore. It must never outlive
rank 0: the kernel kills it when its parent dies (PR_SET_PDEATHSIG), and if the parent is already gone
by the time that is armed, it exits at once. It ignores the stop signals that mpirun sends rank 0's
process group: the ranks stop at an agreed step and need the cluster until they have.
"""
import ctypes
import os
import signal

PR_SET_PDEATHSIG = 1


def main():
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != int(os.environ["MOBILENETV3_SCHEDULER_PARENT"]):
        os._exit(1)
    for stop in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1):
        signal.signal(stop, signal.SIG_IGN)
    import mindspore
    from mindspore.communication import init
    mindspore.set_device("CPU")
    init()  # as MS_ROLE=MS_SCHED this serves the cluster until every worker has left, then exits


if __name__ == "__main__":
    main()
