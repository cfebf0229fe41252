// MindSpore 2.10's runtime replaces the SIGINT handler while it runs graphs with one that sends the
// process SIGTERM (DefaultIntHandler: kill(getpid(), SIGTERM)), so a Ctrl-C reads as `kill`. This SIGTERM
// handler gives a SIGTERM the process sent itself to Python's signal trampoline as the SIGINT it was, and
// passes every other SIGTERM to the handler it replaced.
#include <csignal>
#include <unistd.h>

namespace {

void (*python_trampoline)(int) = nullptr;  // CPython's handler for every signal with a Python-level handler
struct sigaction replaced;

void OnSigterm(int signum, siginfo_t *info, void *context) {
  if (info != nullptr && info->si_pid == getpid() && python_trampoline != nullptr) {
    python_trampoline(SIGINT);
  } else if (replaced.sa_flags & SA_SIGINFO) {
    replaced.sa_sigaction(signum, info, context);
  } else if (replaced.sa_handler == SIG_DFL) {
    signal(signum, SIG_DFL);  // end the process as SIGTERM does by default
    raise(signum);
  } else if (replaced.sa_handler != SIG_IGN) {
    replaced.sa_handler(signum);
  }
}

}  // namespace

// Installs the relay over the current SIGTERM handler; SIGINT must be handled by Python (CPython's
// default). Returns 0, or -1 when SIGINT's handler is not Python's or sigaction fails.
extern "C" int InstallSigintRelay() {
  struct sigaction current;
  if (sigaction(SIGINT, nullptr, &current) != 0 || (current.sa_flags & SA_SIGINFO) ||
      current.sa_handler == SIG_DFL || current.sa_handler == SIG_IGN) {
    return -1;
  }
  struct sigaction relay = {};
  relay.sa_sigaction = OnSigterm;
  relay.sa_flags = SA_SIGINFO | SA_RESTART;
  sigemptyset(&relay.sa_mask);
  struct sigaction previous;
  if (sigaction(SIGTERM, nullptr, &previous) != 0) return -1;
  if (previous.sa_sigaction == relay.sa_sigaction) return 0;  // already installed over this handler
  python_trampoline = current.sa_handler;
  replaced = previous;
  return sigaction(SIGTERM, &relay, nullptr);
}
