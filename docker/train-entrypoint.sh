#!/bin/sh
# The compose `train` service's entrypoint: `make <target>` with the kit in /opt/venv, where a stop reaches
# the kit. `docker compose stop` (or a spot interruption's shutdown) sends SIGTERM to the container's main
# process; make would die of it at once, leaving the kit it started to be killed with the container before it
# writes its checkpoint. So make runs in the background and the signal goes to the commands it runs: on each
# branch below make, the first process that is not make or a shell (the kit finishes its step, checkpoints and
# exits 0; torchrun passes the signal on to its workers). Make then goes on as after any command, and this
# script exits with make's own status.
# -o setup: the image has no .venv to create (the setup target would apt-install build dependencies).
make -o setup VENV=/opt/venv "$@" &
make_pid=$!
forward() {  # forward SIGNAL PID: SIGNAL to the commands below PID
    for child in $(cat /proc/"$2"/task/*/children 2>/dev/null); do
        case "$(cat "/proc/$child/comm" 2>/dev/null)" in
            make | sh | bash | dash) forward "$1" "$child" ;;
            *) kill -s "$1" "$child" 2>/dev/null ;;
        esac
    done
}
trap 'interrupted=1; forward TERM "$make_pid"' TERM
trap 'interrupted=1; forward INT "$make_pid"' INT
# `wait` returns early when a trapped signal arrives: then wait again, until make itself has exited.
while :; do
    interrupted=0
    wait "$make_pid"
    status=$?
    if [ "$interrupted" = 0 ] || ! kill -0 "$make_pid" 2>/dev/null; then
        break
    fi
done
exit "$status"
