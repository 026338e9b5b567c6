# `sam build` (BuildMethod: makefile) calls build-AttestFunction with
# ARTIFACTS_DIR set; it needs neither Docker nor cargo-lambda on x86_64.
# ARCH (default arm64, matching the template) picks the target: arm64 uses
# cargo-lambda (which cross-compiles with zig); x86_64 a plain cargo build.
ARCH ?= arm64

.PHONY: build-AttestFunction bootstrap

build-AttestFunction:
	$(MAKE) bootstrap
	cp target/lambda/bootstrap "$(ARTIFACTS_DIR)/bootstrap"

bootstrap:
	mkdir -p target/lambda
	if [ "$(ARCH)" = "arm64" ] || [ "$(ARCH)" = "aarch64" ]; then \
		cargo lambda build --release --arm64 --bin intune-attest && \
		cp target/lambda/intune-attest/bootstrap target/lambda/bootstrap; \
	else \
		cargo build --release --locked --bin intune-attest && \
		cp target/release/intune-attest target/lambda/bootstrap; \
	fi
