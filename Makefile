# The two commands of the README. Each sets up what a fresh machine lacks (scripts/setup.sh).
.PHONY: demo test
demo:
	scripts/demo.sh $(ARGS)
test:
	scripts/test.sh
