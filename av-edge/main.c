/* av-edge: placeholder until the relay daemon lands. */
int main(void) { return 0; }
