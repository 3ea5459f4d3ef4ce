# Installed as /etc/profile.d/stseg-venv.sh in the stseg-dist images.
# Login shells read /etc/profile, which on Debian resets PATH (for a non-root user to
# /usr/local/bin:/usr/bin:/bin:...) and then sources this folder. KubeRay 1.2 and 1.3 start Ray, the
# autoscaler and the wait-gcs-ready check with `/bin/bash -lc`, so without this `ray` is not found.
VIRTUAL_ENV="${VIRTUAL_ENV:-/opt/venv}"
case ":${PATH}:" in
  *":${VIRTUAL_ENV}/bin:"*) ;;
  *) PATH="${VIRTUAL_ENV}/bin:${PATH}" ;;
esac
export VIRTUAL_ENV PATH
