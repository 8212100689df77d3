# mica - build, test, run, bench. Everything lands in $(BUILD)/.
# Sources are found by convention so adding a module needs no edit here:
#   lib/*.c                  -> $(BUILD)/libmica.a
#   cmd/NAME.c               -> $(BUILD)/bin/NAME
#   tests/unit/test_*.c      -> $(BUILD)/tests/unit/test_*        (Check, no services)
#   tests/integration/test_*.c -> $(BUILD)/tests/integration/test_* (Check, real services)
#   tests/peers/NAME.c       -> $(BUILD)/tests/peers/NAME         (helper programs for tests)
#   bench/DIR/NAME.c         -> $(BUILD)/bench/NAME
#   tests/fuzz/fuzz_*.c      -> $(BUILD)/fuzz/fuzz_*              (libFuzzer, `make fuzz`)
include config.mk

BUILD ?= build
PKGS := libmicrohttpd gnutls openssl libpq jansson hiredis libcurl inih libargon2
PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS := $(shell pkg-config --libs $(PKGS) 2>/dev/null)

WARN := -Wall -Wextra -Werror -Wshadow -Wformat=2 -Wno-format-nonliteral
HARDEN := -fstack-protector-strong -D_FORTIFY_SOURCE=2 -fPIE
OPT ?= -O2 -g
CFLAGS := -std=gnu11 $(OPT) $(WARN) $(HARDEN) $(EXTRA_CFLAGS) -Ilib -I. $(PKG_CFLAGS) -MMD -MP
LDFLAGS := -pie -Wl,-z,relro,-z,now $(EXTRA_LDFLAGS)
LIBS := $(PKG_LIBS) -lgfshare -lpthread -ldl

LIB_SRC := $(wildcard lib/*.c)
LIB_OBJ := $(LIB_SRC:%.c=$(BUILD)/obj/%.o)
# Service directories: each becomes $(BUILD)/lib<dir>.a, linked into every
# program and test (static archives only pull in what a program uses).
SVC_DIRS := $(foreach d,keycenter account,$(if $(wildcard $(d)/*.c),$(d)))
SVC_LIBS := $(foreach d,$(SVC_DIRS),$(BUILD)/lib$(d).a)
ALL_LIBS := $(SVC_LIBS) $(BUILD)/libmica.a
CMD_SRC := $(wildcard cmd/*.c)
BINS := $(CMD_SRC:cmd/%.c=$(BUILD)/bin/%)
UNIT_SRC := $(wildcard tests/unit/test_*.c)
UNIT := $(UNIT_SRC:tests/unit/%.c=$(BUILD)/tests/unit/%)
INTEG_SRC := $(wildcard tests/integration/test_*.c)
INTEG := $(INTEG_SRC:tests/integration/%.c=$(BUILD)/tests/integration/%)
PEER_SRC := $(wildcard tests/peers/*.c)
PEERS := $(PEER_SRC:tests/peers/%.c=$(BUILD)/tests/peers/%)
BENCH_SRC := $(wildcard bench/*/*.c)
BENCHES := $(foreach s,$(BENCH_SRC),$(BUILD)/bench/$(basename $(notdir $(s))))
FUZZ_SRC := $(wildcard tests/fuzz/fuzz_*.c)

.PHONY: all test asan run stop bench fuzz clean deps check-config
all: $(ALL_LIBS) $(BINS) $(UNIT) $(INTEG) $(PEERS) $(BENCHES)

$(BUILD)/obj/%.o: %.c
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) -c $< -o $@

$(BUILD)/libmica.a: $(LIB_OBJ)
	@mkdir -p $(@D)
	rm -f $@ && ar rcs $@ $^

define svc_rule
$(BUILD)/lib$(1).a: $(patsubst %.c,$(BUILD)/obj/%.o,$(wildcard $(1)/*.c))
	@mkdir -p $$(@D)
	rm -f $$@ && ar rcs $$@ $$^
endef
$(foreach d,$(SVC_DIRS),$(eval $(call svc_rule,$(d))))

$(BUILD)/bin/%: $(BUILD)/obj/cmd/%.o $(ALL_LIBS)
	@mkdir -p $(@D)
	$(CC) $(LDFLAGS) $^ $(LIBS) -o $@

# Check tests: the file's tests and suite, plus the one shared main (tests/check_main.c).
CHECK_MAIN := $(BUILD)/obj/tests/check_main.o
$(BUILD)/tests/unit/%: $(BUILD)/obj/tests/unit/%.o $(CHECK_MAIN) $(ALL_LIBS)
	@mkdir -p $(@D)
	$(CC) $(LDFLAGS) $^ $(LIBS) $(shell pkg-config --libs check) -o $@

$(BUILD)/tests/integration/%: $(BUILD)/obj/tests/integration/%.o $(CHECK_MAIN) $(ALL_LIBS)
	@mkdir -p $(@D)
	$(CC) $(LDFLAGS) $^ $(LIBS) $(shell pkg-config --libs check) -o $@

$(BUILD)/tests/peers/%: $(BUILD)/obj/tests/peers/%.o $(ALL_LIBS)
	@mkdir -p $(@D)
	$(CC) $(LDFLAGS) $^ $(LIBS) -o $@

define bench_rule
$(BUILD)/bench/$(basename $(notdir $(1))): $(BUILD)/obj/$(basename $(1)).o $(ALL_LIBS)
	@mkdir -p $$(@D)
	$$(CC) $$(LDFLAGS) $$^ $$(LIBS) -o $$@
endef
$(foreach s,$(BENCH_SRC),$(eval $(call bench_rule,$(s))))

deps:
	./deploy/install-deps

# The full suite: unit, then integration against private PostgreSQL, Redis and
# SoftHSM on free ports (tests/run starts and always tears them down).
test: deps
	$(MAKE) all
	$(MAKE) fuzz
	BUILD=$(BUILD) ./tests/run

# Same tests, ASan + UBSan build in its own directory.
asan: deps
	$(MAKE) BUILD=build-asan OPT="-O1 -g -fno-omit-frame-pointer" \
		EXTRA_CFLAGS="-fsanitize=address,undefined -fno-sanitize-recover=all" \
		EXTRA_LDFLAGS="-fsanitize=address,undefined" all
	BUILD=build-asan ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
		UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 ./tests/run

# libFuzzer targets: libmica and the service archives rebuilt with clang and
# coverage in their own tree.
FUZZ_LIBS := $(foreach d,$(SVC_DIRS),build/fuzz-obj/lib$(d).a) build/fuzz-obj/libmica.a
fuzz:
	$(MAKE) BUILD=build/fuzz-obj CC=clang OPT="-O1 -g" \
		EXTRA_CFLAGS="-fsanitize=fuzzer-no-link,address,undefined" $(FUZZ_LIBS)
	@mkdir -p build/fuzz
	@for s in $(FUZZ_SRC); do \
		n=$$(basename $$s .c); \
		echo "clang $$s -> build/fuzz/$$n"; \
		clang -std=gnu11 -O1 -g -Wall -Wextra -Werror -Ilib -I. $(PKG_CFLAGS) \
			-fsanitize=fuzzer,address,undefined $$s $(FUZZ_LIBS) \
			$(LIBS) -o build/fuzz/$$n || exit 1; \
	done

run: deps
	$(MAKE) all
	./deploy/dev-up

stop:
	./deploy/dev-down

bench: deps
	$(MAKE) all
	./bench/run

clean:
	rm -rf build build-asan

-include $(shell find $(BUILD)/obj -name '*.d' 2>/dev/null)
