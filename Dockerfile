# shunt's image: the four static (musl) binaries and nothing else, as deploy/ runs them
# (/usr/local/bin/shunt-agent, shunt-proxy, shuntctl, and shunt-cni, which the agent installs
# into the node's CNI bin dir). The binaries are built on the host, so
# the image build needs no network:
#   cargo xtask build-ebpf
#   SHUNT_EBPF_OBJECT=$PWD/target/ebpf/bpfel-unknown-none/release/shunt-ebpf \
#     cargo +1.99.0 build --release --target x86_64-unknown-linux-musl \
#     -p shunt-agent -p shunt-proxy -p shuntctl -p shunt-cni
#   podman build -t localhost/shunt:0.1.0 .
# (PROFILE=debug for a debug build: --build-arg PROFILE=debug.) .dockerignore keeps the
# context to these binaries.
FROM scratch
ARG PROFILE=release
COPY target/x86_64-unknown-linux-musl/${PROFILE}/shunt-agent \
     target/x86_64-unknown-linux-musl/${PROFILE}/shunt-proxy \
     target/x86_64-unknown-linux-musl/${PROFILE}/shuntctl \
     target/x86_64-unknown-linux-musl/${PROFILE}/shunt-cni \
     /usr/local/bin/
ENTRYPOINT ["/usr/local/bin/shunt-agent"]
