# Rendered by envkit 0.1.0 from images/pytorch-cuda/2.6.yaml; do not edit, edit the spec.
# pytorch-cuda:2.6: torch 2.6.0 / CUDA 12.4 / cuDNN 9.1.0.70 / Python 3.11
#
# The system part of the image. envkit writes the Python environment's packages as layers of
# their own from the locked wheels, each file checked against the lock's hashes, and stacks them
# with these: NVIDIA's CUDA wheels and torch directly on the base, where every image of the family
# shares them, and the rest of the locked set last. Equivalent to, in a venv made below:
#   uv pip install --require-hashes --no-deps -r requirements.txt
FROM envkit/debian:bookworm-minbase-33760934346d
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# Layer 1, system packages and the default user: changes least after the base, so it comes first.
# SSH host keys that a package install may generate never stay in a layer: every container of the
# image would share them (the dev entrypoint makes fresh ones at first start).
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      binutils=2.40-2 \
      binutils-common=2.40-2 \
      binutils-x86-64-linux-gnu=2.40-2 \
      ca-certificates=20230311+deb12u1 \
      cpp=4:12.2.0-3 \
      cpp-12=12.2.0-14+deb12u1 \
      g++=4:12.2.0-3 \
      g++-12=12.2.0-14+deb12u1 \
      gcc=4:12.2.0-3 \
      gcc-12=12.2.0-14+deb12u1 \
      libasan8=12.2.0-14+deb12u1 \
      libatomic1=12.2.0-14+deb12u1 \
      libbinutils=2.40-2 \
      libc-dev-bin=2.36-9+deb12u14 \
      libc6-dev=2.36-9+deb12u14 \
      libcc1-0=12.2.0-14+deb12u1 \
      libcrypt-dev=1:4.4.33-2 \
      libctf-nobfd0=2.40-2 \
      libctf0=2.40-2 \
      libexpat1=2.5.0-1+deb12u2 \
      libexpat1-dev=2.5.0-1+deb12u2 \
      libgcc-12-dev=12.2.0-14+deb12u1 \
      libgomp1=12.2.0-14+deb12u1 \
      libgprofng0=2.40-2 \
      libgssapi-krb5-2=1.20.1-2+deb12u5 \
      libisl23=0.25-1.1 \
      libitm1=12.2.0-14+deb12u1 \
      libjansson4=2.14-2 \
      libk5crypto3=1.20.1-2+deb12u5 \
      libkeyutils1=1.6.3-2 \
      libkrb5-3=1.20.1-2+deb12u5 \
      libkrb5support0=1.20.1-2+deb12u5 \
      liblsan0=12.2.0-14+deb12u1 \
      libmpc3=1.3.1-1 \
      libmpfr6=4.2.0-1 \
      libncursesw6=6.4-4 \
      libnsl-dev=1.3.0-2 \
      libnsl2=1.3.0-2 \
      libpython3-stdlib=3.11.2-1+b1 \
      libpython3.11=3.11.2-6+deb12u8 \
      libpython3.11-dev=3.11.2-6+deb12u8 \
      libpython3.11-minimal=3.11.2-6+deb12u8 \
      libpython3.11-stdlib=3.11.2-6+deb12u8 \
      libquadmath0=12.2.0-14+deb12u1 \
      libreadline8=8.2-1.3 \
      libsqlite3-0=3.40.1-2+deb12u2 \
      libssl3=3.0.20-1~deb12u2 \
      libstdc++-12-dev=12.2.0-14+deb12u1 \
      libtirpc-common=1.3.3+ds-1 \
      libtirpc-dev=1.3.3+ds-1 \
      libtirpc3=1.3.3+ds-1 \
      libtsan2=12.2.0-14+deb12u1 \
      libubsan1=12.2.0-14+deb12u1 \
      linux-libc-dev=6.1.176-1 \
      media-types=10.0.0 \
      openssl=3.0.20-1~deb12u2 \
      python3=3.11.2-1+b1 \
      python3-distutils=3.11.2-3 \
      python3-lib2to3=3.11.2-3 \
      python3-minimal=3.11.2-1+b1 \
      python3-pip-whl=23.0.1+dfsg-1 \
      python3-setuptools-whl=66.1.1-1+deb12u2 \
      python3.11=3.11.2-6+deb12u8 \
      python3.11-minimal=3.11.2-6+deb12u8 \
      python3.11-venv=3.11.2-6+deb12u8 \
      readline-common=8.2-1.3 \
      rpcsvc-proto=1.4.3-1 \
      zlib1g-dev=1:1.2.13.dfsg-1 \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/cache/ldconfig/aux-cache /var/log/apt /var/log/dpkg.log \
      /etc/ssh/ssh_host_* \
 && groupadd --gid 1000 envkit \
 && SOURCE_DATE_EPOCH=1761955200 useradd --no-log-init --uid 1000 --gid 1000 \
      --create-home --shell /bin/bash envkit \
 && install -d -o 1000 -g 1000 /workspace
# Login shells (SSH, Jupyter's terminal, editors over SSH) read /etc/profile, which resets PATH:
# this gives them the image's environment back and starts them in /workspace.
COPY files/profile.sh /etc/profile.d/envkit.sh
# The environment the Python layers fill, with pip from Debian's wheel. It belongs to the
# default user, who can add packages to it (as in Jupyter's docker-stacks).
RUN /usr/bin/python3.11 -m venv /opt/venv \
 && chown -R 1000:1000 /opt/venv
# Layer 3, envkit's own files (probe and benchmark scripts): small, and they change most often.
COPY probe/ /opt/envkit/probe/
ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    VIRTUAL_ENV=/opt/venv \
    PYTHONUNBUFFERED=1 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    NVIDIA_REQUIRE_CUDA="cuda>=12.4"
LABEL \
      "io.envkit.arch-list"="sm_50,sm_60,sm_70,sm_75,sm_80,sm_86,sm_90" \
      "io.envkit.cuda"="12.4" \
      "io.envkit.cudnn"="9.1.0.70" \
      "io.envkit.envkit-version"="0.1.0" \
      "io.envkit.lock-digest"="sha256:f3fcb14c66f7de2681efa3539c93eaf3b2efaa4a5e0fde38c1b48971d0fde5a8" \
      "io.envkit.min-driver"="550.54.14" \
      "io.envkit.name"="pytorch-cuda:2.6" \
      "io.envkit.nccl"="2.21.5" \
      "io.envkit.python"="3.11" \
      "io.envkit.source-date-epoch"="1761955200" \
      "io.envkit.spec-digest"="sha256:9e761426dba9f11764f945cbd39afbef8d9e97c68707b8f148f81204a2714b20" \
      "io.envkit.torch"="2.6.0" \
      "io.envkit.torchvision"="0.21.0" \
      "io.envkit.variant"="runtime" \
      "org.opencontainers.image.base.name"="envkit/debian:bookworm-minbase-33760934346d" \
      "org.opencontainers.image.description"="PyTorch 2.6.0 with CUDA 12.4 and cuDNN 9 on Debian bookworm" \
      "org.opencontainers.image.title"="pytorch-cuda:2.6" \
      "org.opencontainers.image.vendor"="envkit" \
      "org.opencontainers.image.version"="2.6"
USER 1000:1000
WORKDIR /workspace
CMD ["python"]
